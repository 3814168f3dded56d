//! What the bootstrapper works on, from flags or environment variables.

use std::time::Duration;

use pipeline_runtime::nats::{self, NatsArgs};
use secrecy::SecretString;

/// Default of `EVENTSTORE_DATABASE_URL`.
pub const DEFAULT_EVENTSTORE_DATABASE_URL: &str =
    "postgresql://root@127.0.0.1:26257/eventstoredb?sslmode=disable";
/// Default of `ORDERS_DATABASE_URL`.
pub const DEFAULT_ORDERS_DATABASE_URL: &str =
    "postgresql://root@127.0.0.1:26257/ordersdb?sslmode=disable";
/// Default of `PAYMENTS_DATABASE_URL`.
pub const DEFAULT_PAYMENTS_DATABASE_URL: &str =
    "postgresql://root@127.0.0.1:26257/paymentsdb?sslmode=disable";
/// Default of `NATS_URL`.
pub const DEFAULT_NATS_URL: &str = nats::DEFAULT_URL;

/// Creates the databases, runs the migrations and creates or updates the JetStream streams and
/// durable consumers of the order pipeline. Running it again changes nothing.
///
/// Every URL may hold a password: `Debug` shows none of them.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bootstrapper", version, about, long_about = None)]
pub struct Config {
    /// The event store's database, created if missing.
    #[arg(long, env = "EVENTSTORE_DATABASE_URL", default_value = DEFAULT_EVENTSTORE_DATABASE_URL, hide_env_values = true)]
    pub eventstore_database_url: SecretString,

    /// The read model's database (querymodelworker, ordersvc), created if missing.
    #[arg(long, env = "ORDERS_DATABASE_URL", default_value = DEFAULT_ORDERS_DATABASE_URL, hide_env_values = true)]
    pub orders_database_url: SecretString,

    /// paymentworker's database, created if missing.
    #[arg(long, env = "PAYMENTS_DATABASE_URL", default_value = DEFAULT_PAYMENTS_DATABASE_URL, hide_env_values = true)]
    pub payments_database_url: SecretString,

    /// The server's administrator, who creates the databases and the contexts' roles
    /// (`BOOTSTRAP_DATABASE_URL`). Default: each database's server as `root`, without a password, on
    /// database `postgres`. A context whose URL names this user gets no role of its own.
    #[arg(
        long = "admin-database-url",
        env = "BOOTSTRAP_DATABASE_URL",
        hide_env_values = true
    )]
    pub admin_database_url: Option<SecretString>,

    /// The URL ordersvc reads ordersdb with (give it to ordersvc as its `ORDERS_DATABASE_URL`): its
    /// user gets a role that may only read (`ORDERS_READER_DATABASE_URL`). Default: none.
    #[arg(long, env = "ORDERS_READER_DATABASE_URL", hide_env_values = true)]
    pub orders_reader_database_url: Option<SecretString>,

    /// The URL deadlinewatcher reads ordersdb with (give it to deadlinewatcher as its
    /// `ORDERS_DATABASE_URL`): its user gets a role that may only read the `orders` table
    /// (`ORDERS_WATCHER_DATABASE_URL`). Default: none.
    #[arg(long, env = "ORDERS_WATCHER_DATABASE_URL", hide_env_values = true)]
    pub orders_watcher_database_url: Option<SecretString>,

    /// NATS server(s) with JetStream and how to log in (`NATS_URL`, comma-separated for a cluster;
    /// `NATS_USER`, `NATS_PASSWORD`, `NATS_TLS_CA`).
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Replicas of the JetStream streams: 1 on one server, 3 on a three-node cluster.
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// Seconds to wait for a database or NATS server to answer before giving up.
    #[arg(long, env = "BOOTSTRAPPER_CONNECT_TIMEOUT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub connect_timeout_secs: u64,

    /// Leave the SQL databases alone.
    #[arg(long)]
    pub skip_sql: bool,

    /// Leave NATS alone.
    #[arg(long)]
    pub skip_nats: bool,
}

impl Default for Config {
    /// The command line's defaults, as in an empty environment.
    fn default() -> Self {
        pipeline_runtime::cli::defaults()
    }
}

impl Config {
    /// How long to wait for a server to answer.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
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
    fn the_defaults_are_valid() {
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn more_than_five_replicas_are_refused() {
        assert!(Config::try_parse_from(["bootstrapper", "--replicas", "6"]).is_err());
        assert!(Config::try_parse_from(["bootstrapper", "--replicas", "0"]).is_err());
    }

    #[test]
    fn a_bad_database_name_names_the_variable_without_the_password() {
        let config = Config {
            orders_database_url: "postgresql://app:secret@db:26257/orders-db".into(),
            ..Config::default()
        };
        let message = format!("{:#}", config.validate().expect_err("refused"));
        assert!(message.contains("ORDERS_DATABASE_URL"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn debug_output_shows_no_password() {
        let config = Config {
            eventstore_database_url: "postgresql://es:hunter1@db/eventstoredb".into(),
            admin_database_url: Some("postgresql://root:hunter2@db/postgres".into()),
            orders_reader_database_url: Some("postgresql://r:hunter3@db/ordersdb".into()),
            nats: NatsArgs::new("nats://u:hunter4@127.0.0.1:4222").with_user("b", "hunter5"),
            ..Config::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter"), "{debug}");
    }
}
