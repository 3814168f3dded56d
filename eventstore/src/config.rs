//! The event store's configuration: environment variables or flags of the same meaning.

use std::net::SocketAddr;
use std::time::Duration;

use pipeline_runtime::telemetry::TelemetryConfig;

/// Configuration of the event store. Every field can be given as a flag or an environment variable.
#[derive(Clone, clap::Parser)]
#[command(
    name = "eventstore",
    version,
    about = "gRPC event store with a transactional outbox to NATS JetStream"
)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "EVENTSTORE_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,

    /// SQL database of the event store (CockroachDB or PostgreSQL).
    #[arg(
        long,
        env = "EVENTSTORE_DATABASE_URL",
        default_value = "postgresql://root@127.0.0.1:26257/eventstoredb?sslmode=disable",
        hide_env_values = true
    )]
    pub database_url: String,

    /// NATS servers, comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Largest accepted `event_data`, in bytes.
    #[arg(long, env = "EVENTSTORE_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,

    /// Connections in the SQL pool.
    #[arg(long, env = "EVENTSTORE_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,

    /// Appends committed together in one transaction, at most (group commit).
    #[arg(long, env = "EVENTSTORE_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub batch_size: u16,

    /// Transactions appending at the same time, at most. One is fastest on PostgreSQL at
    /// SERIALIZABLE: concurrent batches touch the same index pages and abort each other (measured
    /// with `cargo bench -p eventstore --bench append`); raise it for a multi-node CockroachDB.
    #[arg(long, env = "EVENTSTORE_BATCH_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub batch_workers: u8,

    /// How often the outbox relay sweeps for events not yet published, in milliseconds.
    #[arg(long, env = "EVENTSTORE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,

    /// How long to wait for the database or JetStream before answering UNAVAILABLE, in milliseconds.
    #[arg(long, env = "EVENTSTORE_TIMEOUT_MS", default_value_t = 3000)]
    pub timeout_ms: u64,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// A configuration for tests and embedding: the defaults with the given endpoints.
    pub fn new(
        addr: SocketAddr,
        database_url: impl Into<String>,
        nats_url: impl Into<String>,
    ) -> Self {
        Self {
            telemetry: TelemetryConfig::default(),
            addr,
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            max_event_bytes: 1024 * 1024,
            db_connections: 16,
            batch_size: 256,
            batch_workers: 1,
            sweep_interval_ms: 1000,
            timeout_ms: 3000,
        }
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(100))
    }
}

// The database URL may carry a password: never print it.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field(
                "database_url",
                &pipeline_runtime::db::redact(&self.database_url),
            )
            .field("nats_url", &self.nats_url)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("db_connections", &self.db_connections)
            .field("batch_size", &self.batch_size)
            .field("batch_workers", &self.batch_workers)
            .field("sweep_interval_ms", &self.sweep_interval_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("telemetry", &self.telemetry)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn a_bad_address_names_its_flag() {
        let err = Config::try_parse_from(["eventstore", "--addr", "nowhere"]).expect_err("refused");
        assert!(err.to_string().contains("--addr"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let config = Config::new(
            "127.0.0.1:0".parse().expect("address"),
            "postgresql://es:hunter2@db/eventstoredb",
            "nats://127.0.0.1:4222",
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
