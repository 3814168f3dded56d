#![doc = include_str!("../README.md")]

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("eventstore");
}

pub use generated::*;

pub use prost_types::Timestamp;
