//! The whole pipeline as real processes: POST an order over HTTP and watch it reach its final state.

mod saga;
mod stack;
mod tracing_flow;
