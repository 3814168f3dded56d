#![doc = include_str!("../README.md")]

pub mod api;
pub mod orders;
pub mod pace;

pub use pace::{Rate, Stop, parse_rate};
