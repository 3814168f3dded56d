//! Start-up configuration: environment variables with `--flags` of the same meaning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pipeline_runtime::db::redact;
use pipeline_runtime::eventstore::ClientTls;
use pipeline_runtime::nats::NatsArgs;
use pipeline_runtime::service::RuntimeArgs;
use pipeline_runtime::telemetry::TelemetryConfig;
use secrecy::{ExposeSecret as _, SecretString};

use crate::auth::Auth;

/// `ORDERSVC_AUTH`: whether callers need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// A bearer token checked against `ORDERSVC_JWKS` (the default).
    Jwt,
    /// No check: anyone reaches every order.
    None,
}

pub const DEFAULT_ADDR: &str = "0.0.0.0:3000";
pub const DEFAULT_EVENTSTORE_URL: &str = "http://127.0.0.1:50051";
pub const DEFAULT_ORDERS_DATABASE_URL: &str =
    "postgresql://root@127.0.0.1:26257/ordersdb?sslmode=disable";
/// One event store group commit takes up to 256 appends (`EVENTSTORE_BATCH_SIZE`) and queues four
/// times that: one instance's requests fit in one batch and leave queue room for other instances.
/// More at once would only wait longer for the same commits, up to the timeout.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
/// A notice usually answers a `min_version` wait within milliseconds; this re-read is only for one
/// that got lost, so it can be slow and cheap.
pub const DEFAULT_MIN_VERSION_REREAD_MS: u64 = 500;

/// How ordersvc listens and where its dependencies are. `Debug` hides the database URL and the NATS
/// credentials.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ordersvc",
    version,
    about = "The HTTP order API of the order pipeline"
)]
pub struct Config {
    /// Address to listen on (`ORDERSVC_ADDR`, default 0.0.0.0:3000).
    #[arg(long, env = "ORDERSVC_ADDR", value_name = "ORDERSVC_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,

    /// The event store's gRPC URL (`EVENTSTORE_URL`, default http://127.0.0.1:50051).
    #[arg(long, env = "EVENTSTORE_URL", value_name = "EVENTSTORE_URL", default_value = DEFAULT_EVENTSTORE_URL)]
    pub eventstore_url: String,

    /// How the event store's certificate is checked (`EVENTSTORE_TLS_CA`).
    #[command(flatten)]
    pub eventstore_tls: ClientTls,

    /// The read model's database (`ORDERS_DATABASE_URL`, default
    /// postgresql://root@127.0.0.1:26257/ordersdb?sslmode=disable).
    #[arg(long, env = "ORDERS_DATABASE_URL", value_name = "ORDERS_DATABASE_URL", default_value = DEFAULT_ORDERS_DATABASE_URL, hide_env_values = true)]
    pub orders_database_url: SecretString,

    /// Upper bound of one call to the event store or one database connection attempt, in
    /// milliseconds (`ORDERSVC_TIMEOUT_MS`, default 5000).
    #[arg(long, env = "ORDERSVC_TIMEOUT_MS", value_name = "ORDERSVC_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,

    /// Database connections of one instance (`ORDERSVC_DB_CONNECTIONS`, default 10).
    #[arg(long, env = "ORDERSVC_DB_CONNECTIONS", value_name = "ORDERSVC_DB_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_connections: u32,

    /// How long `GET /api/orders/{id}?min_version=N` waits for the read model to reach version N,
    /// in milliseconds (`ORDERSVC_MIN_VERSION_WAIT_MS`, default 3000).
    #[arg(long, env = "ORDERSVC_MIN_VERSION_WAIT_MS", value_name = "ORDERSVC_MIN_VERSION_WAIT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub min_version_wait_ms: u64,

    /// How often a `min_version` request re-reads its order when no read-model notice woke it,
    /// in milliseconds (`ORDERSVC_MIN_VERSION_REREAD_MS`, default 500): the fallback for a notice
    /// lost on its way from querymodelworker.
    #[arg(long, env = "ORDERSVC_MIN_VERSION_REREAD_MS", value_name = "ORDERSVC_MIN_VERSION_REREAD_MS", default_value_t = DEFAULT_MIN_VERSION_REREAD_MS,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub min_version_reread_ms: u64,

    /// Requests handled at once (`ORDERSVC_MAX_IN_FLIGHT`, default 256). One more is refused at
    /// once with 503 and `Retry-After`, before it reads its body or writes anything; `/healthz` and
    /// `/readyz` are never refused.
    #[arg(long, env = "ORDERSVC_MAX_IN_FLIGHT", value_name = "ORDERSVC_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_in_flight: u32,

    /// Whether callers need a token (`ORDERSVC_AUTH`): `jwt` (the default) requires a bearer token
    /// checked against `ORDERSVC_JWKS`; `none` runs the API open to anyone who reaches the port,
    /// for local experiments only (said in a warning at start).
    #[arg(long, env = "ORDERSVC_AUTH", value_name = "ORDERSVC_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// The keys that sign the callers' tokens (`ORDERSVC_JWKS`): a JWKS file, or an `http://` or
    /// `https://` URL that is fetched at the first request and again when a token names an
    /// unknown key (at most every 5 s; each fetch within 5 s and 1 MiB). Required unless
    /// `ORDERSVC_AUTH=none`.
    #[arg(long, env = "ORDERSVC_JWKS", value_name = "ORDERSVC_JWKS")]
    pub jwks: Option<String>,

    /// PEM file of extra certificate authorities an `https://` `ORDERSVC_JWKS` is checked against
    /// besides the system's (`ORDERSVC_JWKS_CA`, default none), e.g. a private identity
    /// provider's; only with an `https://` URL. Read and checked at start: a file that cannot be
    /// read or holds no certificate stops it.
    #[arg(long, env = "ORDERSVC_JWKS_CA", value_name = "ORDERSVC_JWKS_CA", value_parser = crate::auth::ca_file)]
    pub jwks_ca: Option<PathBuf>,

    /// The issuer a token must name (`iss`, `ORDERSVC_ISSUER`); required with `ORDERSVC_JWKS`.
    #[arg(long, env = "ORDERSVC_ISSUER", value_name = "ORDERSVC_ISSUER")]
    pub issuer: Option<String>,

    /// The audience a token must name (`aud`, `ORDERSVC_AUDIENCE`); required with
    /// `ORDERSVC_JWKS`.
    #[arg(long, env = "ORDERSVC_AUDIENCE", value_name = "ORDERSVC_AUDIENCE")]
    pub audience: Option<String>,

    /// Where querymodelworker's read-model notices (`READMODEL.orders`) come from, which answer
    /// `min_version` requests as soon as the read model moved (`NATS_URL`, `NATS_USER`, ...). NATS
    /// down only slows those requests to their re-read; nothing else of the API needs it.
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Span export (`ZIPKIN_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// The threads that run the service (`SERVICE_THREADS`).
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// A variable's value unless unset or blank.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

impl Config {
    /// The command line's defaults (as in an empty environment) with the three addresses given
    /// (for tests and embedding); NATS is the local default, set `nats` for another.
    pub fn new(
        addr: SocketAddr,
        eventstore_url: impl Into<String>,
        orders_database_url: impl Into<String>,
    ) -> Self {
        let mut config: Self = pipeline_runtime::cli::defaults();
        config.addr = addr;
        config.eventstore_url = eventstore_url.into();
        config.orders_database_url = SecretString::from(orders_database_url.into());
        config
    }

    /// Tokens checked against the key set `jwks` (a file or URL), issued by `issuer` for
    /// `audience`.
    pub fn with_tokens(self, jwks: &str, issuer: &str, audience: &str) -> Self {
        Self {
            auth: Some(AuthMode::Jwt),
            jwks: Some(jwks.to_owned()),
            issuer: Some(issuer.to_owned()),
            audience: Some(audience.to_owned()),
            ..self
        }
    }

    /// The API open to anyone (`ORDERSVC_AUTH=none`).
    pub fn open(self) -> Self {
        Self {
            auth: Some(AuthMode::None),
            jwks: None,
            ..self
        }
    }

    /// The token check this configuration asks for; the error names the variables to set.
    pub fn token_check(&self) -> anyhow::Result<Auth> {
        match (self.auth, given(&self.jwks)) {
            (Some(AuthMode::None), None) => Ok(Auth::open()),
            (Some(AuthMode::None), Some(_)) => anyhow::bail!(
                "ORDERSVC_AUTH=none and ORDERSVC_JWKS are both set: unset ORDERSVC_JWKS to run \
                 the API open, or ORDERSVC_AUTH to check tokens"
            ),
            (_, None) => anyhow::bail!(
                "ORDERSVC_JWKS is not set: set ORDERSVC_JWKS (a JWKS file or an http(s):// URL) with \
                 ORDERSVC_ISSUER and ORDERSVC_AUDIENCE so that callers need a token, or \
                 ORDERSVC_AUTH=none to run the API open to anyone"
            ),
            (_, Some(jwks)) => {
                let issuer = given(&self.issuer).ok_or_else(|| {
                    anyhow::anyhow!("ORDERSVC_ISSUER must be set with ORDERSVC_JWKS")
                })?;
                let audience = given(&self.audience).ok_or_else(|| {
                    anyhow::anyhow!("ORDERSVC_AUDIENCE must be set with ORDERSVC_JWKS")
                })?;
                // An empty `ORDERSVC_JWKS_CA` is none, as if unset.
                let ca = self
                    .jwks_ca
                    .as_deref()
                    .filter(|ca| !ca.as_os_str().is_empty());
                Auth::jwt(jwks, ca, issuer, audience)
            }
        }
    }

    /// Checks what clap's types cannot; the error names the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        let url = self.orders_database_url.expose_secret();
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            anyhow::bail!(
                "ORDERS_DATABASE_URL must be a postgresql:// URL, not {}",
                redact(url)
            );
        }
        let url = self.eventstore_url.as_str();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("EVENTSTORE_URL must be an http:// or https:// URL, not {url:?}");
        }
        self.nats.validate()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn min_version_wait(&self) -> Duration {
        Duration::from_millis(self.min_version_wait_ms)
    }

    pub fn min_version_reread(&self) -> Duration {
        Duration::from_millis(self.min_version_reread_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `config`'s token settings are refused (empty when they are not).
    fn refusal(config: &Config) -> String {
        config
            .token_check()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    }
    use clap::{CommandFactory as _, Parser as _};

    #[test]
    fn the_command_line_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = Config::try_parse_from(["ordersvc"]).expect("defaults parse");
        assert_eq!(config.addr.to_string(), DEFAULT_ADDR);
        assert_eq!(config.eventstore_url, DEFAULT_EVENTSTORE_URL);
        assert_eq!(
            config.orders_database_url.expose_secret(),
            DEFAULT_ORDERS_DATABASE_URL
        );
        assert_eq!(config.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    }

    #[test]
    fn new_is_the_command_line_with_only_the_endpoints_given() {
        let new = Config::new(
            "127.0.0.1:7".parse().expect("address"),
            "http://es:50052",
            "postgresql://o@db:5432/orders",
        );
        let parsed: Config = pipeline_runtime::cli::parse_without_env([
            "ordersvc",
            "--addr=127.0.0.1:7",
            "--eventstore-url=http://es:50052",
            "--orders-database-url=postgresql://o@db:5432/orders",
        ])
        .expect("parses");
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
    fn without_keys_or_an_open_api_start_is_refused_naming_both_variables() {
        let config = Config::try_parse_from(["ordersvc"]).expect("defaults parse");
        let error = refusal(&config);
        assert!(
            error.contains("ORDERSVC_JWKS") && error.contains("ORDERSVC_AUTH=none"),
            "{error}"
        );
    }

    #[test]
    fn keys_without_issuer_or_audience_are_refused_naming_the_variable() {
        let config = Config::try_parse_from(["ordersvc", "--jwks", "/nonexistent/jwks.json"])
            .expect("parses");
        let error = refusal(&config);
        assert!(error.contains("ORDERSVC_ISSUER"), "{error}");
        let config = Config::try_parse_from([
            "ordersvc",
            "--jwks",
            "/nonexistent/jwks.json",
            "--issuer",
            "https://id.example",
        ])
        .expect("parses");
        let error = refusal(&config);
        assert!(error.contains("ORDERSVC_AUDIENCE"), "{error}");
    }

    #[test]
    fn an_unreadable_key_set_is_refused_naming_the_variable() {
        let config = Config::try_parse_from(["ordersvc"])
            .expect("parses")
            .with_tokens("/nonexistent/jwks.json", "https://id.example", "orders");
        let error = refusal(&config);
        assert!(error.contains("ORDERSVC_JWKS"), "{error}");
    }

    #[test]
    fn an_open_api_and_a_key_set_together_are_refused() {
        let config = Config::try_parse_from(["ordersvc", "--auth", "none", "--jwks", "x.json"])
            .expect("parses");
        let error = refusal(&config);
        assert!(error.contains("ORDERSVC_AUTH=none"), "{error}");
        let open = Config::try_parse_from(["ordersvc", "--auth", "none"]).expect("parses");
        assert!(open.token_check().expect("open").is_open());
    }

    #[test]
    fn a_limit_of_no_requests_in_flight_is_refused_naming_the_variable() {
        let error = Config::try_parse_from(["ordersvc", "--max-in-flight", "0"])
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("ORDERSVC_MAX_IN_FLIGHT"), "{error}");
    }

    #[test]
    fn a_database_url_of_another_engine_is_refused_naming_the_variable() {
        let config = Config::new(
            "127.0.0.1:0".parse().expect("address"),
            DEFAULT_EVENTSTORE_URL,
            "mysql://db/ordersdb",
        );
        let error = config.validate().expect_err("refused").to_string();
        assert!(error.contains("ORDERS_DATABASE_URL"), "{error}");
    }

    #[test]
    fn a_password_never_reaches_the_debug_output() {
        let config = Config::new(
            "127.0.0.1:0".parse().expect("address"),
            DEFAULT_EVENTSTORE_URL,
            "postgresql://app:secret@db:26257/ordersdb",
        );
        let config = Config {
            nats: config.nats.with_user("ordersvc", "hunter3"),
            ..config
        };
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("hunter3"),
            "{debug}"
        );
    }
}
