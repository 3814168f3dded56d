#![doc = include_str!("../README.md")]

pub mod backoff;
pub mod cli;
pub mod consumer;
pub mod db;
pub mod deadletter;
pub mod eventstore;
pub mod nats;
pub mod orders;
pub mod pem;
pub mod service;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
pub mod tracecontext;
