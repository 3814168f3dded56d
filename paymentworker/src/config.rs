//! The worker's configuration: environment variables with `--flags` of the same meaning.

use std::time::Duration;

use order_domain::Money;
use pipeline_runtime::consumer;
use pipeline_runtime::telemetry::TelemetryConfig;

/// Everything paymentworker reads at start. `--help` lists the variables.
#[derive(Clone, clap::Parser)]
#[command(
    name = "paymentworker",
    about = "Debits, fails and refunds order payments"
)]
pub struct Config {
    /// NATS servers, comma-separated (`NATS_URL`).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// The event store's gRPC address (`EVENTSTORE_URL`).
    #[arg(long, env = "EVENTSTORE_URL", default_value = "http://127.0.0.1:50051")]
    pub eventstore_url: String,

    /// The worker's own database of wallets and payments (`PAYMENTS_DATABASE_URL`).
    #[arg(
        long,
        env = "PAYMENTS_DATABASE_URL",
        default_value = "postgresql://root@127.0.0.1:26257/paymentsdb?sslmode=disable",
        hide_env_values = true
    )]
    pub payments_database_url: String,

    /// Balance of a customer's wallet when it is first used (`PAYMENT_INITIAL_CREDIT`).
    #[arg(
        long = "initial-credit",
        env = "PAYMENT_INITIAL_CREDIT",
        default_value = "1000.00",
        value_parser = parse_initial_credit
    )]
    pub initial_credit: Money,

    /// Deliveries of a failing message before it is dead-lettered (`MAX_DELIVERIES`).
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliveries: i64,

    /// Messages handled at the same time by this instance (`WORKER_CONCURRENCY`).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Connections in the SQL pool (`PAYMENTS_DB_CONNECTIONS`).
    #[arg(long, env = "PAYMENTS_DB_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_connections: u32,

    /// Time limit of an event store call and of getting a database connection, in milliseconds
    /// (`WORKER_TIMEOUT_MS`).
    #[arg(long, env = "WORKER_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub timeout_ms: u64,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

fn parse_initial_credit(value: &str) -> Result<Money, String> {
    value
        .parse()
        .map_err(|err| format!("PAYMENT_INITIAL_CREDIT {err}"))
}

impl Config {
    /// The defaults, pointed at the given servers (for tests and embedding).
    pub fn new(
        nats_url: impl Into<String>,
        eventstore_url: impl Into<String>,
        payments_database_url: impl Into<String>,
    ) -> Self {
        Self {
            telemetry: TelemetryConfig::default(),
            nats_url: nats_url.into(),
            eventstore_url: eventstore_url.into(),
            payments_database_url: payments_database_url.into(),
            initial_credit: Money::from_whole_units(1000).unwrap_or(Money::ZERO),
            max_deliveries: 5,
            concurrency: 16,
            db_connections: 8,
            timeout_ms: 5000,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// How the consumer loop runs.
    pub fn consumer_options(&self) -> consumer::Options {
        consumer::Options {
            max_deliveries: self.max_deliveries,
            concurrency: usize::from(self.concurrency),
            ..consumer::Options::default()
        }
    }
}

// The database URL may carry a password: never print it.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &self.nats_url)
            .field("eventstore_url", &self.eventstore_url)
            .field(
                "payments_database_url",
                &pipeline_runtime::db::redact(&self.payments_database_url),
            )
            .field("initial_credit", &self.initial_credit)
            .field("max_deliveries", &self.max_deliveries)
            .field("concurrency", &self.concurrency)
            .field("db_connections", &self.db_connections)
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
    fn the_command_line_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn a_bad_initial_credit_names_the_variable() {
        let err = Config::try_parse_from(["paymentworker", "--initial-credit", "12.345"])
            .expect_err("refused");
        assert!(err.to_string().contains("PAYMENT_INITIAL_CREDIT"), "{err}");
    }

    #[test]
    fn the_initial_credit_defaults_to_a_thousand() {
        let config = Config::try_parse_from(["paymentworker"]).expect("defaults parse");
        assert_eq!(config.initial_credit.to_string(), "1000.00");
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let config = Config::new(
            "nats://127.0.0.1:4222",
            "http://127.0.0.1:50051",
            "postgresql://app:secret@db:26257/paymentsdb",
        );
        assert!(!format!("{config:?}").contains("secret"));
    }
}
