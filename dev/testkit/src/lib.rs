#![doc = include_str!("../README.md")]

mod cut;
pub mod drain;
pub mod host;
pub mod jetstream;
mod nats;
mod nats_cluster;
pub mod net;
pub mod patroni;
mod postgres;
pub mod procfs;
pub mod scans;
mod support;
pub mod tls;
pub mod tokens;
mod zipkin;

pub use cut::CutProxy;
pub use nats::NatsServer;
pub use nats_cluster::NatsCluster;
pub use patroni::PgCluster;
pub use postgres::Postgres;
pub use support::{eventually, free_port};
pub use zipkin::Zipkin;

/// Sends `tracing` output to the test harness's captured output, filtered by `RUST_LOG` (default
/// `info`). Safe to call from every test: only the first call installs the subscriber.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
