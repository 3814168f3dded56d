//! The whole pipeline as real processes: POST an order over HTTP and watch it reach its final state.

mod cluster;
mod db_failover;
mod deadlines;
mod overload;
mod poison;
mod saga;
mod security;
mod stack;
mod steady;
mod stream_loss;
mod tracing_flow;
