//! The worker's configuration: environment variables with `--flags` of the same meaning.

use std::time::Duration;

use order_domain::Money;
use pipeline_runtime::consumer;
use pipeline_runtime::telemetry::TelemetryConfig;
use tokio::sync::watch;

/// Everything reviewworker reads at start. `--help` lists the variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "reviewworker", about = "Approves or rejects paid orders")]
pub struct Config {
    /// NATS servers, comma-separated (`NATS_URL`).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// The event store's gRPC address (`EVENTSTORE_URL`).
    #[arg(long, env = "EVENTSTORE_URL", default_value = "http://127.0.0.1:50051")]
    pub eventstore_url: String,

    /// Largest amount approved; above it an order is rejected (`REVIEW_MAX_AMOUNT`).
    #[arg(
        long = "max-amount",
        env = "REVIEW_MAX_AMOUNT",
        default_value = "500.00",
        value_parser = parse_max_amount
    )]
    pub max_amount: Money,

    /// Deliveries of a failing message before it is dead-lettered (`MAX_DELIVERIES`).
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliveries: i64,

    /// Messages handled at the same time by this instance (`WORKER_CONCURRENCY`).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Time limit of an event store call, in milliseconds (`WORKER_TIMEOUT_MS`).
    #[arg(long, env = "WORKER_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub timeout_ms: u64,

    /// Test seam, off by default and not settable from the outside: while it reads `true`, every
    /// delivered message waits before it is handled, so a test can act on the order meanwhile.
    #[arg(skip)]
    pub hold: Option<watch::Receiver<bool>>,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

fn parse_max_amount(value: &str) -> Result<Money, String> {
    value
        .parse()
        .map_err(|err| format!("REVIEW_MAX_AMOUNT {err}"))
}

impl Config {
    /// The defaults, pointed at the given servers (for tests and embedding).
    pub fn new(nats_url: impl Into<String>, eventstore_url: impl Into<String>) -> Self {
        Self {
            telemetry: TelemetryConfig::default(),
            nats_url: nats_url.into(),
            eventstore_url: eventstore_url.into(),
            max_amount: Money::from_whole_units(500).unwrap_or(Money::ZERO),
            max_deliveries: 5,
            concurrency: 16,
            timeout_ms: 5000,
            hold: None,
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn a_bad_review_limit_names_the_variable() {
        let err = Config::try_parse_from(["reviewworker", "--max-amount", "12.345"])
            .expect_err("refused");
        assert!(err.to_string().contains("REVIEW_MAX_AMOUNT"), "{err}");
    }

    #[test]
    fn the_review_limit_defaults_to_five_hundred_and_nothing_is_held() {
        let config = Config::try_parse_from(["reviewworker"]).expect("defaults parse");
        assert_eq!(config.max_amount.to_string(), "500.00");
        assert!(config.hold.is_none());
    }
}
