//! The worker's configuration: environment variables with `--flags` of the same meaning.

use order_domain::Money;
use pipeline_runtime::consumer::WorkerArgs;
use pipeline_runtime::service::RuntimeArgs;
use pipeline_runtime::telemetry::TelemetryConfig;
#[cfg(feature = "test-util")]
use tokio::sync::watch;

/// Everything reviewworker reads at start. `--help` lists the variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "reviewworker", about = "Approves or rejects paid orders")]
pub struct Config {
    /// NATS, the event store and how messages are consumed.
    #[command(flatten)]
    pub worker: WorkerArgs,

    /// Largest amount approved; above it an order is rejected (`REVIEW_MAX_AMOUNT`).
    #[arg(
        long = "max-amount",
        env = "REVIEW_MAX_AMOUNT",
        default_value = "500.00",
        value_parser = parse_max_amount
    )]
    pub max_amount: Money,

    /// Test seam, built only with the `test-util` feature (which only this crate's tests turn on)
    /// and not settable from the outside: while it reads `true`, every delivered message waits
    /// before it is handled, so a test can act on the order meanwhile.
    #[cfg(feature = "test-util")]
    #[arg(skip)]
    pub hold: Option<watch::Receiver<bool>>,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// The threads that run the service (`SERVICE_THREADS`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

fn parse_max_amount(value: &str) -> Result<Money, String> {
    value
        .parse()
        .map_err(|err| format!("REVIEW_MAX_AMOUNT {err}"))
}

impl Config {
    /// The command line's defaults (as in an empty environment), pointed at the given servers (for
    /// tests and embedding).
    pub fn new(nats_url: impl Into<String>, eventstore_url: impl Into<String>) -> Self {
        let mut config: Self = pipeline_runtime::cli::defaults();
        config.worker = WorkerArgs::new(nats_url, eventstore_url);
        config
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
    fn new_is_the_command_line_with_only_the_endpoints_given() {
        let new = Config::new("nats://n:4223", "http://es:50052");
        let parsed: Config = pipeline_runtime::cli::parse_without_env([
            "reviewworker",
            "--nats-url=nats://n:4223",
            "--eventstore-url=http://es:50052",
        ])
        .expect("parses");
        pipeline_runtime::cli::same_config(&new, &parsed, |c| {
            vec![Some(&c.worker.nats.url), c.worker.nats.password.as_ref()]
        })
        .expect("Config::new is the command line with only the endpoints given");
        assert_eq!(new.max_amount.to_string(), "500.00");
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
        #[cfg(feature = "test-util")]
        assert!(config.hold.is_none());
    }
}
