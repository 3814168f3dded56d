//! The order pipeline's binaries (`eventstore`, `ordersvc`, the three workers, `bootstrapper`) run as
//! real processes against a real nats-server and PostgreSQL from the test kit: [`Pipeline`].
//!
//! The end-to-end tests live in `tests/it` and use it; so does the chaos tool (`dev/chaos`).

pub mod fresh;
pub mod pipeline;
pub mod tokens;

pub use pipeline::{Options, Pipeline, is_final, order_body};
