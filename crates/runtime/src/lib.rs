#![doc = include_str!("../README.md")]

pub mod db;
pub mod nats;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
