//! The worker's configuration: environment variables or flags of the same meaning.

use std::time::Duration;

use pipeline_runtime::consumer;
use pipeline_runtime::eventstore::ClientTls;
use pipeline_runtime::nats::NatsArgs;
use pipeline_runtime::service::RuntimeArgs;
use pipeline_runtime::telemetry::TelemetryConfig;
use secrecy::SecretString;

/// Configuration of querymodelworker. Every field can be given as a flag or an environment variable;
/// the flags are accepted before or after the subcommand. `Debug` hides the database URL and the
/// NATS credentials.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// NATS: servers, user, TLS (`NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TLS_CA`).
    #[command(flatten)]
    pub nats: NatsArgs,

    /// The event store's gRPC endpoint (`EVENTSTORE_URL`), read to fill gaps and to rebuild.
    #[arg(
        long,
        env = "EVENTSTORE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub eventstore_url: String,

    /// How the event store's certificate is checked (`EVENTSTORE_TLS_CA`).
    #[command(flatten)]
    pub eventstore_tls: ClientTls,

    /// The read model's database (`ORDERS_DATABASE_URL`); this worker is its only writer.
    #[arg(
        long,
        env = "ORDERS_DATABASE_URL",
        default_value = "postgresql://root@127.0.0.1:26257/ordersdb?sslmode=disable",
        hide_env_values = true,
        global = true
    )]
    pub orders_database_url: SecretString,

    /// Deliveries of a message that keeps failing before it is dead-lettered (`MAX_DELIVERIES`).
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = consumer::DEFAULT_MAX_DELIVERIES,
          value_parser = clap::value_parser!(i64).range(1..=1000), global = true)]
    pub max_deliveries: i64,

    /// Messages in hand at once by this instance, taken and committed as one batch
    /// (`WORKER_CONCURRENCY`).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = consumer::DEFAULT_CONCURRENCY as u16,
          value_parser = clap::value_parser!(u16).range(1..=1024), global = true)]
    pub worker_concurrency: u16,

    /// Batches in hand at once (`WORKER_LANES`); every message of an order goes to the same one,
    /// so an order's messages are still projected one after the other, in stream order.
    #[arg(long, env = "WORKER_LANES", default_value_t = consumer::DEFAULT_LANES as u8,
          value_parser = clap::value_parser!(u8).range(1..=64), global = true)]
    pub worker_lanes: u8,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// The threads that run the service (`SERVICE_THREADS`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl Config {
    /// The command line's defaults (as in an empty environment) with the given endpoints, for
    /// tests and embedding.
    pub fn new(
        nats_url: impl Into<String>,
        eventstore_url: impl Into<String>,
        orders_database_url: impl Into<String>,
    ) -> Self {
        let mut config = pipeline_runtime::cli::defaults::<Cli>().config;
        config.nats.url = SecretString::from(nats_url.into());
        config.eventstore_url = eventstore_url.into();
        config.orders_database_url = SecretString::from(orders_database_url.into());
        config
    }

    /// How the consumer loop runs.
    pub fn consumer_options(&self) -> consumer::Options {
        consumer::Options {
            max_deliveries: self.max_deliveries,
            concurrency: usize::from(self.worker_concurrency),
            lanes: usize::from(self.worker_lanes),
            ..consumer::Options::default()
        }
    }

    /// How long a database or event store call may take before it counts as unavailable.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// The command line: `querymodelworker [run]` or `querymodelworker rebuild`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "querymodelworker",
    version,
    about = "Keeps the orders read model up to date from the order events"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Consume the order events and keep the read model up to date (the default).
    Run,
    /// Empty the read model at ORDERS_DATABASE_URL and replay every event of the event store into it.
    Rebuild,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_and_flags_go_after_the_subcommand() {
        let cli = Cli::try_parse_from(["querymodelworker"]).expect("parses");
        assert_eq!(cli.command, None);
        let cli = Cli::try_parse_from(["querymodelworker", "rebuild", "--max-deliveries", "3"])
            .expect("parses");
        assert_eq!(cli.command, Some(Command::Rebuild));
        assert_eq!(cli.config.max_deliveries, 3);
    }

    #[test]
    fn new_is_the_command_line_with_only_the_endpoints_given() {
        let new = Config::new(
            "nats://n:4223",
            "http://es:50052",
            "postgresql://q@db:5432/orders",
        );
        let parsed = pipeline_runtime::cli::parse_without_env::<Cli, _, _>([
            "querymodelworker",
            "--nats-url=nats://n:4223",
            "--eventstore-url=http://es:50052",
            "--orders-database-url=postgresql://q@db:5432/orders",
        ])
        .expect("parses")
        .config;
        pipeline_runtime::cli::same_config(&new, &parsed, |c| {
            vec![
                Some(&c.orders_database_url),
                Some(&c.nats.url),
                c.nats.password.as_ref(),
            ]
        })
        .expect("Config::new is the command line with only the endpoints given");
    }

    #[test]
    fn a_bad_delivery_count_names_its_flag() {
        let err = Cli::try_parse_from(["querymodelworker", "--max-deliveries", "0"])
            .expect_err("refused");
        assert!(err.to_string().contains("--max-deliveries"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let config = Config::new(
            "nats://127.0.0.1:4222",
            "http://127.0.0.1:50051",
            "postgresql://q:hunter2@db/ordersdb",
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
