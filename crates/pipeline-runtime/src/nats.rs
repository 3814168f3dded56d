//! Connecting to NATS: where the servers are and who we are on them (`NATS_URL`, `NATS_USER`,
//! `NATS_PASSWORD`, `NATS_TLS_CA`), read once here and flattened into every binary's configuration.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};

use crate::pem::Pem;

/// Default of `NATS_URL`.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Where NATS is and how to log in; flattened (`#[command(flatten)]`) into each binary's `Config`.
///
/// The password is never shown: not by `Debug` (the URLs, which may hold one, neither), not in
/// `--help`, not in any error.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS servers, comma-separated for a cluster (`NATS_URL`); a `tls://` URL requires TLS.
    #[arg(
        id = "nats_url",
        long = "nats-url",
        env = "NATS_URL",
        default_value = DEFAULT_URL,
        hide_env_values = true,
        global = true
    )]
    pub url: SecretString,

    /// User on the NATS servers (`NATS_USER`), with `NATS_PASSWORD`; unset when they ask for none.
    #[arg(id = "nats_user", long = "nats-user", env = "NATS_USER", global = true)]
    pub user: Option<String>,

    /// Password of `NATS_USER` (`NATS_PASSWORD`). Prefer the variable: a flag shows in `ps`.
    #[arg(
        id = "nats_password",
        long = "nats-password",
        env = "NATS_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<SecretString>,

    /// PEM file of the CA that signed the NATS servers' certificates (`NATS_TLS_CA`); when set,
    /// TLS is required and only this CA is trusted.
    #[arg(
        id = "nats_tls_ca",
        long = "nats-tls-ca",
        env = "NATS_TLS_CA",
        global = true
    )]
    pub tls_ca: Option<PathBuf>,
}

impl Default for NatsArgs {
    /// The command line's defaults: the local server, no user, no TLS.
    fn default() -> Self {
        Self::new(DEFAULT_URL)
    }
}

impl NatsArgs {
    /// The servers at `url`, without a user or TLS.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            user: None,
            password: None,
            tls_ca: None,
        }
    }

    /// Logs in as `user`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(SecretString::from(password.into()));
        self
    }

    /// Requires TLS, trusting only the CA in the PEM file `ca`.
    pub fn with_tls_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(ca.into());
        self
    }

    /// The user name, if one is set (an empty one counts as none).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref().filter(|user| !user.is_empty())
    }

    fn password(&self) -> Option<&str> {
        self.password
            .as_ref()
            .map(|password| password.expose_secret())
            .filter(|password| !password.is_empty())
    }

    /// The servers and the user, for messages: `nats://h:4222 as user "eventstore"`, any password
    /// in a URL replaced by `***`.
    pub fn describe(&self) -> String {
        let urls = redact_urls(self.url.expose_secret());
        match self.user() {
            Some(user) => format!("{urls} as user {user:?}"),
            None => urls,
        }
    }

    /// Checks every value before anything is contacted; the error names the variable at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        parse_urls(self.url.expose_secret()).context("NATS_URL is invalid")?;
        match (self.user(), self.password()) {
            (Some(_), None) => anyhow::bail!("NATS_USER is set but NATS_PASSWORD is not"),
            (None, Some(_)) => anyhow::bail!("NATS_PASSWORD is set but NATS_USER is not"),
            _ => {}
        }
        if let Some(ca) = &self.tls_ca {
            crate::pem::read("NATS_TLS_CA", ca, Pem::Certificate)?;
        }
        Ok(())
    }

    /// The client's options: name, user, TLS, reconnecting forever with backoff.
    fn options(&self, name: &str) -> async_nats::ConnectOptions {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            });
        if let (Some(user), Some(password)) = (self.user(), self.password()) {
            options = options.user_and_password(user.to_owned(), password.to_owned());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        options
    }
}

/// Connects to the servers of `args` and waits until the first connection is up, at most
/// `connect_timeout`, so that a wrong URL fails start-up clearly.
///
/// After that the client reconnects by itself, forever, with backoff.
pub async fn connect(
    args: &NatsArgs,
    name: &str,
    connect_timeout: Duration,
) -> anyhow::Result<async_nats::Client> {
    let client = connect_in_background(args, name).await?;
    wait_connected(&client, connect_timeout)
        .await
        .with_context(|| format!("cannot reach NATS at {}", args.describe()))?;
    Ok(client)
}

/// Returns a client at once and, when no server answers yet, connects in the background, retrying
/// forever: for services that must keep working while NATS is down (the event store appends and
/// publishes later).
///
/// A server that answers but refuses us (wrong user or password, a certificate we do not trust) is
/// a configuration error, not an outage: that fails here, naming the servers and the user.
pub async fn connect_in_background(
    args: &NatsArgs,
    name: &str,
) -> anyhow::Result<async_nats::Client> {
    args.validate()?;
    let servers = parse_urls(args.url.expose_secret())?;
    // One attempt first, to tell a refusal from an outage: the background client only reports
    // "authorization violation" to its event callback, and retries it forever.
    let first = args.options(name).connect(servers.as_slice()).await;
    match first {
        Ok(client) => return Ok(client),
        Err(err) if is_refusal(&err) => {
            anyhow::bail!("NATS at {} refused the connection: {err}", args.describe())
        }
        Err(err) => tracing::info!(
            servers = %args.describe(),
            error = %err,
            "NATS is not reachable yet; connecting in the background"
        ),
    }
    args.options(name)
        .retry_on_initial_connect()
        .connect(servers.as_slice())
        .await
        .with_context(|| format!("cannot reach NATS at {}", args.describe()))
}

/// A refusal by a server that answered: authorization, or TLS (a certificate we do not trust, a
/// server without TLS when we require it).
fn is_refusal(err: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as Kind;
    matches!(
        err.kind(),
        Kind::AuthorizationViolation | Kind::Authentication | Kind::Tls
    ) || is_tls_failure(err)
}

/// Whether a rustls error is somewhere in the chain (a failed handshake comes as an `io::Error`).
fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<async_nats::rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps: look at that one too.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// Waits until `client` is connected, at most `timeout`.
pub async fn wait_connected(client: &async_nats::Client, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while client.connection_state() != async_nats::connection::State::Connected {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no server answered within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Splits and checks a comma-separated list of NATS URLs; an error shows the URL without its
/// password.
pub fn parse_urls(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let servers = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("invalid NATS URL {}", redact_urls(url)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!servers.is_empty(), "no NATS URL given");
    Ok(servers)
}

/// A comma-separated list of NATS URLs with every password replaced by `***`.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            if url.contains("://") {
                crate::db::redact(url)
            } else {
                // `host:port` or `user:pass@host:port` without a scheme: `url` cannot parse those.
                match url.rsplit_once('@') {
                    Some((_, host)) => format!("***@{host}"),
                    None => url.to_owned(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[test]
    fn a_comma_separated_list_names_every_server() {
        let servers = parse_urls("nats://127.0.0.1:4222, nats://127.0.0.1:4223").expect("valid");
        assert_eq!(servers.len(), 2);
    }

    #[test]
    fn an_empty_list_is_refused() {
        assert!(parse_urls(" , ").is_err());
    }

    #[test]
    fn passwords_are_redacted_in_lists() {
        let shown = redact_urls("nats://u:pw@a:4222, b:4222,u:pw@c:4222");
        assert_eq!(shown, "nats://u:***@a:4222,b:4222,***@c:4222");
    }

    #[test]
    fn the_password_is_never_shown() {
        let args = NatsArgs::new("nats://u:hunter1@127.0.0.1:4222").with_user("app", "hunter2");
        let debug = format!("{args:?}");
        assert!(!debug.contains("hunter"), "{debug}");
        let args = NatsArgs::new("nats://127.0.0.1:4222").with_user("app", "hunter2");
        let debug = format!("{args:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("app"), "the user is shown: {debug}");
        assert!(!args.describe().contains("hunter2"));
        assert_eq!(args.describe(), r#"nats://127.0.0.1:4222 as user "app""#);

        let help = {
            use clap::CommandFactory as _;
            Cli::command().render_long_help().to_string()
        };
        assert!(help.contains("[env: NATS_PASSWORD]"), "{help}");
    }

    #[test]
    fn flags_fill_every_field() {
        let cli = Cli::try_parse_from([
            "x",
            "--nats-url",
            "tls://n1:4222",
            "--nats-user",
            "u",
            "--nats-password",
            "p",
            "--nats-tls-ca",
            "/ca.pem",
        ])
        .expect("parses");
        assert_eq!(cli.nats.url.expose_secret(), "tls://n1:4222");
        assert_eq!(cli.nats.user(), Some("u"));
        assert_eq!(cli.nats.password(), Some("p"));
        assert_eq!(cli.nats.tls_ca, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn a_user_needs_a_password_and_a_password_a_user() {
        let mut args = NatsArgs::new(DEFAULT_URL).with_user("u", "p");
        args.password = None;
        let message = format!("{:#}", args.validate().expect_err("refused"));
        assert!(message.contains("NATS_PASSWORD"), "{message}");

        let mut args = NatsArgs::new(DEFAULT_URL).with_user("u", "p");
        args.user = None;
        let message = format!("{:#}", args.validate().expect_err("refused"));
        assert!(message.contains("NATS_USER"), "{message}");
    }

    #[test]
    fn a_missing_ca_file_names_the_variable() {
        let args = NatsArgs::new(DEFAULT_URL).with_tls_ca("/nonexistent/ca.pem");
        let message = format!("{:#}", args.validate().expect_err("refused"));
        assert!(message.contains("NATS_TLS_CA"), "{message}");
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    }

    #[test]
    fn an_invalid_url_is_shown_without_its_password() {
        let args = NatsArgs::new("nats://u:hunter2@bad host:4222");
        let message = format!("{:#}", args.validate().expect_err("refused"));
        assert!(message.contains("NATS_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
