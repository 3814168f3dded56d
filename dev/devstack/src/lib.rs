#![doc = include_str!("../README.md")]
// A command-line tool: what it prints on stdout is its output.
#![allow(clippy::print_stdout)]

pub mod bench;
pub mod certs;
pub mod probe;
mod procs;
pub mod sample;
pub mod services;
pub mod settings;
pub mod stack;
pub mod tokens;

pub use stack::{Reported, Stack};
