//! The worker's configuration: environment variables with `--flags` of the same meaning.

use order_domain::Money;
use pipeline_runtime::consumer::WorkerArgs;
use pipeline_runtime::service::RuntimeArgs;
use pipeline_runtime::telemetry::TelemetryConfig;
use secrecy::SecretString;

/// Everything paymentworker reads at start. `--help` lists the variables; `Debug` hides the
/// database URL (it may carry a password).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "paymentworker",
    about = "Debits, fails and refunds order payments"
)]
pub struct Config {
    /// NATS, the event store and how messages are consumed.
    #[command(flatten)]
    pub worker: WorkerArgs,

    /// The worker's own database of wallets and payments (`PAYMENTS_DATABASE_URL`).
    #[arg(
        long,
        env = "PAYMENTS_DATABASE_URL",
        default_value = "postgresql://root@127.0.0.1:26257/paymentsdb?sslmode=disable",
        hide_env_values = true
    )]
    pub payments_database_url: SecretString,

    /// Balance of a customer's wallet when it is first used (`PAYMENT_INITIAL_CREDIT`).
    #[arg(
        long = "initial-credit",
        env = "PAYMENT_INITIAL_CREDIT",
        default_value = "1000.00",
        value_parser = parse_initial_credit
    )]
    pub initial_credit: Money,

    /// Connections in the SQL pool (`PAYMENTS_DB_CONNECTIONS`).
    #[arg(long, env = "PAYMENTS_DB_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_connections: u32,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// The threads that run the service (`SERVICE_THREADS`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

fn parse_initial_credit(value: &str) -> Result<Money, String> {
    value
        .parse()
        .map_err(|err| format!("PAYMENT_INITIAL_CREDIT {err}"))
}

impl Config {
    /// The command line's defaults (as in an empty environment), pointed at the given servers (for
    /// tests and embedding).
    pub fn new(
        nats_url: impl Into<String>,
        eventstore_url: impl Into<String>,
        payments_database_url: impl Into<String>,
    ) -> Self {
        let mut config: Self = pipeline_runtime::cli::defaults();
        config.worker = WorkerArgs::new(nats_url, eventstore_url);
        config.payments_database_url = SecretString::from(payments_database_url.into());
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
        let new = Config::new(
            "nats://n:4223",
            "http://es:50052",
            "postgresql://p@db:5432/pay",
        );
        let parsed: Config = pipeline_runtime::cli::parse_without_env([
            "paymentworker",
            "--nats-url=nats://n:4223",
            "--eventstore-url=http://es:50052",
            "--payments-database-url=postgresql://p@db:5432/pay",
        ])
        .expect("parses");
        pipeline_runtime::cli::same_config(&new, &parsed, |c| {
            vec![
                Some(&c.payments_database_url),
                Some(&c.worker.nats.url),
                c.worker.nats.password.as_ref(),
            ]
        })
        .expect("Config::new is the command line with only the endpoints given");
        assert_eq!(new.initial_credit.to_string(), "1000.00");
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
        let config = Config {
            worker: pipeline_runtime::consumer::WorkerArgs {
                nats: config.worker.nats.with_user("pay", "hunter3"),
                ..config.worker
            },
            ..config
        };
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("hunter3"),
            "{debug}"
        );
    }
}
