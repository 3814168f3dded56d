//! The event store's configuration: environment variables or flags of the same meaning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use pipeline_runtime::nats::NatsArgs;
use pipeline_runtime::pem::{self, Pem};
use pipeline_runtime::service::RuntimeArgs;
use pipeline_runtime::telemetry::TelemetryConfig;

/// Configuration of the event store. Every field can be given as a flag or an environment variable.
/// `Debug` hides the database URL and the NATS credentials.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "eventstore",
    version,
    about = "gRPC event store with a transactional outbox to NATS JetStream"
)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "EVENTSTORE_ADDR",
        value_name = "EVENTSTORE_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub addr: SocketAddr,

    /// SQL database of the event store (CockroachDB or PostgreSQL).
    #[arg(
        long,
        env = "EVENTSTORE_DATABASE_URL",
        value_name = "EVENTSTORE_DATABASE_URL",
        default_value = "postgresql://root@127.0.0.1:26257/eventstoredb?sslmode=disable",
        hide_env_values = true
    )]
    pub database_url: SecretString,

    /// NATS: servers, user, TLS (`NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TLS_CA`).
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Largest accepted `event_data`, in bytes.
    #[arg(long, env = "EVENTSTORE_MAX_EVENT_BYTES", value_name = "EVENTSTORE_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,

    /// Connections in the SQL pool for reads, the relay's claims and the like. The appends and the
    /// outbox deletes have a pool of their own besides, of `EVENTSTORE_BATCH_WORKERS` + 1
    /// connections that plan each statement once.
    #[arg(
        long,
        env = "EVENTSTORE_DB_CONNECTIONS",
        value_name = "EVENTSTORE_DB_CONNECTIONS",
        default_value_t = 16
    )]
    pub db_connections: u32,

    /// Events committed together in one transaction, at most (group commit). A `CreateEvents` call
    /// is never split: one with more events commits alone.
    #[arg(long, env = "EVENTSTORE_BATCH_SIZE", value_name = "EVENTSTORE_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub batch_size: u16,

    /// Transactions appending at the same time, at most. One is fastest on PostgreSQL at
    /// SERIALIZABLE: concurrent batches touch the same index pages and abort each other (measured
    /// with the append benchmark, `EVENTSTORE_BATCH_WORKERS=N scripts/bench --only append`); raise
    /// it for a multi-node CockroachDB.
    #[arg(long, env = "EVENTSTORE_BATCH_WORKERS", value_name = "EVENTSTORE_BATCH_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub batch_workers: u8,

    /// How often the outbox relay sweeps for events its memory path did not publish, in
    /// milliseconds. Rows older than twice this (or twice `EVENTSTORE_TIMEOUT_MS`, if longer) are
    /// taken by any instance's sweep.
    #[arg(
        long,
        env = "EVENTSTORE_SWEEP_INTERVAL_MS",
        value_name = "EVENTSTORE_SWEEP_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub sweep_interval_ms: u64,

    /// How long to wait for the database or JetStream before answering UNAVAILABLE, in milliseconds.
    #[arg(
        long,
        env = "EVENTSTORE_TIMEOUT_MS",
        value_name = "EVENTSTORE_TIMEOUT_MS",
        default_value_t = 3000
    )]
    pub timeout_ms: u64,

    /// Certificate chain (PEM) the gRPC server presents. With `EVENTSTORE_TLS_KEY`, the server
    /// speaks TLS only; without both, plaintext.
    #[arg(long, env = "EVENTSTORE_TLS_CERT", value_name = "EVENTSTORE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1) of `EVENTSTORE_TLS_CERT`.
    #[arg(long, env = "EVENTSTORE_TLS_KEY", value_name = "EVENTSTORE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Authority (PEM) that signs the services' client certificates. When set, the server requires
    /// a client certificate signed by it (mTLS; needs `EVENTSTORE_TLS_CERT` and `EVENTSTORE_TLS_KEY`)
    /// and authorizes each call by the certificate's first DNS subjectAltName (the table in the
    /// `authz` module). Unset: any client may append anything.
    #[arg(
        long,
        env = "EVENTSTORE_TLS_CLIENT_CA",
        value_name = "EVENTSTORE_TLS_CLIENT_CA"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// The threads that run the service (`SERVICE_THREADS`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// A subcommand; none: serve.
    #[command(subcommand)]
    pub command: Option<crate::command::Command>,
}

impl Config {
    /// A configuration for tests and embedding: the command line's defaults (as in an empty
    /// environment) with the given endpoints.
    pub fn new(
        addr: SocketAddr,
        database_url: impl Into<String>,
        nats_url: impl Into<String>,
    ) -> Self {
        let mut config: Self = pipeline_runtime::cli::defaults();
        config.addr = addr;
        config.database_url = SecretString::from(database_url.into());
        config.nats.url = SecretString::from(nats_url.into());
        config
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(100))
    }

    /// Checks every value clap's types do not (the database URL, NATS, TLS files, the span
    /// collector), before anything is bound or contacted; the error names the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        pipeline_runtime::db::connect_options(self.database_url.expose_secret())
            .context("EVENTSTORE_DATABASE_URL")?;
        self.nats.validate()?;
        self.telemetry.endpoint()?;
        self.server_tls()?;
        Ok(())
    }

    /// The server's TLS identity, read and checked now, or `None` for plaintext. Exactly one of
    /// the two files, a file that cannot be read, or a certificate and key that do not make an
    /// identity is an error naming the variable.
    pub fn server_tls(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (cert, key) = match (given(&self.tls_cert), given(&self.tls_key)) {
            (None, None) if self.client_ca().is_some() => anyhow::bail!(
                "EVENTSTORE_TLS_CLIENT_CA is set without EVENTSTORE_TLS_CERT and EVENTSTORE_TLS_KEY: \
                 client certificates need a TLS server"
            ),
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                anyhow::bail!(
                    "EVENTSTORE_TLS_CERT is set without EVENTSTORE_TLS_KEY: set both or neither"
                )
            }
            (None, Some(_)) => {
                anyhow::bail!(
                    "EVENTSTORE_TLS_KEY is set without EVENTSTORE_TLS_CERT: set both or neither"
                )
            }
        };
        let cert_pem = pem::read("EVENTSTORE_TLS_CERT", &cert, Pem::Certificate)?;
        let key_pem = pem::read("EVENTSTORE_TLS_KEY", &key, Pem::PrivateKey)?;
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(client_ca) = self.client_ca() {
            let ca_pem = pem::read("EVENTSTORE_TLS_CLIENT_CA", &client_ca, Pem::Certificate)?;
            tls = tls.client_ca_root(Certificate::from_pem(ca_pem));
        }
        // Builds the rustls configuration once, so that a key that does not match its certificate
        // stops the start rather than every handshake.
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .map_err(|err| {
                let client_ca = self
                    .client_ca()
                    .map(|ca| format!(" (with EVENTSTORE_TLS_CLIENT_CA {})", ca.display()))
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "EVENTSTORE_TLS_CERT and EVENTSTORE_TLS_KEY ({}, {}) do not make a TLS identity{client_ca}: {}",
                    cert.display(),
                    key.display(),
                    pipeline_runtime::eventstore::error_chain(&err)
                )
            })?;
        Ok(Some(tls))
    }

    /// The authority of client certificates (`EVENTSTORE_TLS_CLIENT_CA`), when mTLS is on.
    pub fn client_ca(&self) -> Option<PathBuf> {
        given(&self.tls_client_ca)
    }
}

/// A path that was given and is not empty (an empty variable is as if unset).
fn given(path: &Option<PathBuf>) -> Option<PathBuf> {
    path.clone().filter(|p| !p.as_os_str().is_empty())
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
    fn without_a_subcommand_it_serves_and_republish_takes_one_range() {
        let serve = Config::try_parse_from(["eventstore"]).expect("parses");
        assert!(serve.command.is_none());
        let republish =
            Config::try_parse_from(["eventstore", "republish", "--from-start"]).expect("parses");
        assert!(matches!(
            republish.command,
            Some(crate::Command::Republish(ref args)) if args.from_start
        ));
        Config::try_parse_from([
            "eventstore",
            "republish",
            "--from-start",
            "--since",
            "2025-01-01T00:00:00Z",
        ])
        .expect_err("two ranges are refused");
        Config::try_parse_from(["eventstore", "republish", "--since", "yesterday"])
            .expect_err("a time that is not RFC 3339 is refused");
    }

    #[test]
    fn new_is_the_command_line_with_only_the_endpoints_given() {
        let new = Config::new(
            "127.0.0.1:7".parse().expect("address"),
            "postgresql://es@db:5432/events",
            "nats://n:4223",
        );
        let parsed: Config = pipeline_runtime::cli::parse_without_env([
            "eventstore",
            "--addr=127.0.0.1:7",
            "--database-url=postgresql://es@db:5432/events",
            "--nats-url=nats://n:4223",
        ])
        .expect("parses");
        pipeline_runtime::cli::same_config(&new, &parsed, |c| {
            vec![
                Some(&c.database_url),
                Some(&c.nats.url),
                c.nats.password.as_ref(),
            ]
        })
        .expect("Config::new is the command line with only the endpoints given");
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
        let config = Config {
            nats: config.nats.with_user("es", "hunter3"),
            ..config
        };
        assert!(!format!("{config:?}").contains("hunter3"));
    }

    #[test]
    fn a_bad_database_url_names_the_variable_without_its_password() {
        let config = Config::new(
            "127.0.0.1:0".parse().expect("address"),
            "postgresql://es:hunter2@db:port/eventstoredb",
            "nats://127.0.0.1:4222",
        );
        let message = format!("{:#}", config.validate().expect_err("refused"));
        assert!(message.contains("EVENTSTORE_DATABASE_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
