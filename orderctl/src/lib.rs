#![doc = include_str!("../README.md")]

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;

pub mod api;
pub mod commands;
pub mod format;

/// How long a command waits for NATS or the event store.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "orderctl",
    version,
    about = "Operator commands for the order pipeline"
)]
pub struct Cli {
    #[command(flatten)]
    pub endpoints: Endpoints,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the pipeline runs; accepted before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// NATS: servers, user, TLS (`NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TLS_CA`); the
    /// dead-letter commands use it.
    #[command(flatten)]
    pub nats: pipeline_runtime::nats::NatsArgs,

    /// The event store's gRPC endpoint (`EVENTSTORE_URL`).
    #[arg(
        long,
        env = "EVENTSTORE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub eventstore_url: String,

    /// How the event store's certificate is checked (`EVENTSTORE_TLS_CA`).
    #[command(flatten)]
    pub eventstore_tls: pipeline_runtime::eventstore::ClientTls,

    /// ordersvc, the HTTP order API (`ORDERSVC_URL`).
    #[arg(
        long,
        env = "ORDERSVC_URL",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub api_url: String,

    /// The bearer token sent to ordersvc (`ORDERCTL_TOKEN`): an operator's (scope
    /// `orders:admin`) reaches every order, a customer's only that customer's. Unset: no token,
    /// for an API run with `ORDERSVC_AUTH=none`.
    #[arg(long, env = "ORDERCTL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<Token>,
}

/// A bearer token: `Debug` does not show it.
#[derive(Clone)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Token, Self::Err> {
        Ok(Token(text.to_owned()))
    }
}

impl Endpoints {
    /// JetStream on `nats`; fails after [`TIMEOUT`] if no server answers, at once if one refuses.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        let client = pipeline_runtime::nats::connect(&self.nats, "orderctl", TIMEOUT).await?;
        Ok(async_nats::jetstream::new(client))
    }

    /// A client of the event store at `eventstore_url`.
    pub fn event_store(&self) -> anyhow::Result<pipeline_runtime::eventstore::EventStoreClient> {
        pipeline_runtime::eventstore::EventStoreClient::connect_lazy_with(
            &self.eventstore_url,
            TIMEOUT,
            &self.eventstore_tls,
        )
        .context("EVENTSTORE_URL")
    }

    /// A client of ordersvc at `api_url`.
    pub fn api(&self) -> anyhow::Result<api::ApiClient> {
        api::ApiClient::with_token(&self.api_url, self.token.as_ref().map(|t| t.0.as_str()))
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Place an order.
    Create(commands::create::Create),
    /// Print an order from the read model.
    Get(commands::get::Get),
    /// List a customer's orders, newest first.
    List(commands::list::List),
    /// Cancel a Pending or Paid order.
    Cancel(commands::cancel::Cancel),
    /// Follow an order until its status is final, printing each change.
    Watch(commands::watch::Watch),
    /// Print an order's history from the event store.
    Events(commands::events::Events),
    /// Print an order's trace from Zipkin as an indented timeline.
    Trace(commands::trace::Trace),
    /// Place orders at a steady rate, follow them to their final status, report throughput and latency.
    Load(commands::load::Load),
    /// List and replay the messages workers gave up on.
    #[command(subcommand)]
    DeadLetters(commands::dead_letters::DeadLetters),
    /// List the open orders past their payment or review deadline, or near it.
    Deadlines(commands::deadlines::Deadlines),
}

impl Cli {
    /// Runs the command, writing its report to `out`.
    pub async fn run(&self, out: &mut impl Write) -> anyhow::Result<()> {
        match &self.command {
            Command::Create(command) => command.run(&self.endpoints, out).await,
            Command::Get(command) => command.run(&self.endpoints, out).await,
            Command::List(command) => command.run(&self.endpoints, out).await,
            Command::Cancel(command) => command.run(&self.endpoints, out).await,
            Command::Watch(command) => command.run(&self.endpoints, out).await,
            Command::Events(command) => command.run(&self.endpoints, out).await,
            Command::Trace(command) => command.run(&self.endpoints, out).await,
            Command::Load(command) => command.run(&self.endpoints, out).await,
            Command::DeadLetters(command) => command.run(&self.endpoints, out).await,
            Command::Deadlines(command) => command.run(out).await,
        }
    }
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
    fn replay_needs_sequences_or_all_but_not_both() {
        assert!(Cli::try_parse_from(["orderctl", "dead-letters", "replay"]).is_err());
        assert!(Cli::try_parse_from(["orderctl", "dead-letters", "replay", "--all", "3"]).is_err());
        assert!(Cli::try_parse_from(["orderctl", "dead-letters", "replay", "3", "4"]).is_ok());
        assert!(
            Cli::try_parse_from([
                "orderctl",
                "dead-letters",
                "replay",
                "--all",
                "--worker",
                "paymentworker"
            ])
            .is_ok()
        );
    }

    #[test]
    fn deadlines_take_a_window_and_the_watchers_deadlines() {
        let cli = Cli::try_parse_from([
            "orderctl",
            "deadlines",
            "--within",
            "2m",
            "--payment-deadline",
            "5s",
        ])
        .expect("parses");
        let Command::Deadlines(deadlines) = cli.command else {
            panic!("deadlines")
        };
        assert_eq!(deadlines.within, Duration::from_secs(120));
        assert_eq!(deadlines.deadlines.payment_deadline, Duration::from_secs(5));
        let err = Cli::try_parse_from(["orderctl", "deadlines", "--review-deadline", "5"])
            .expect_err("a bare number is refused");
        assert!(err.to_string().contains("REVIEW_DEADLINE"), "{err}");
    }

    const ID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    #[test]
    fn the_api_url_is_global_and_defaults_to_the_local_ordersvc() {
        let cli = Cli::try_parse_from(["orderctl", "get", ID]).expect("parses");
        // ORDERSVC_URL may be set where the tests run; only the flag's precedence is certain.
        assert!(cli.endpoints.api_url.starts_with("http"));
        let cli = Cli::try_parse_from(["orderctl", "get", ID, "--api-url", "http://api:8080"])
            .expect("parses");
        assert_eq!(cli.endpoints.api_url, "http://api:8080");
    }

    #[test]
    fn create_takes_flags_with_items_or_a_file_but_not_both() {
        let cli = Cli::try_parse_from([
            "orderctl",
            "create",
            "--customer",
            "c1",
            "--restaurant",
            "r1",
            "--item",
            "p1:Pizza:12.50:2",
            "--item",
            "b1:Lemonade:3:1",
            "--idempotency-key",
            "k1",
        ])
        .expect("parses");
        let Command::Create(create) = cli.command else {
            panic!("create")
        };
        let body = create.body().expect("a body");
        assert_eq!(body["customer_id"], "c1");
        assert_eq!(body["order_items"][1]["unit_price"], "3");
        assert_eq!(create.idempotency_key.as_deref(), Some("k1"));

        assert!(Cli::try_parse_from(["orderctl", "create", "--file", "order.json"]).is_ok());
        assert!(
            Cli::try_parse_from(["orderctl", "create", "--file", "o.json", "--customer", "c1"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["orderctl", "create", "--customer", "c1"]).is_err());
        assert!(
            Cli::try_parse_from([
                "orderctl",
                "create",
                "--customer",
                "c1",
                "--restaurant",
                "r1",
                "--item",
                "p1:2"
            ])
            .is_err()
        );
    }

    #[test]
    fn get_cancel_watch_and_trace_take_an_order_id() {
        for command in ["get", "cancel", "watch", "trace"] {
            assert!(
                Cli::try_parse_from(["orderctl", command, ID]).is_ok(),
                "{command}"
            );
            assert!(
                Cli::try_parse_from(["orderctl", command, "x"]).is_err(),
                "{command}"
            );
        }
        let cli = Cli::try_parse_from(["orderctl", "cancel", ID, "--reason", "changed my mind"])
            .expect("parses");
        assert!(
            matches!(cli.command, Command::Cancel(c) if c.reason.as_deref() == Some("changed my mind"))
        );
        let cli =
            Cli::try_parse_from(["orderctl", "watch", ID, "--timeout", "2m"]).expect("parses");
        assert!(matches!(cli.command, Command::Watch(w) if w.timeout == Duration::from_secs(120)));
        assert!(Cli::try_parse_from(["orderctl", "watch", ID, "--timeout", "soon"]).is_err());
        let cli = Cli::try_parse_from(["orderctl", "trace", ID, "--zipkin-url", "http://z:9411"])
            .expect("parses");
        assert!(matches!(cli.command, Command::Trace(t) if t.zipkin_url == "http://z:9411"));
    }

    #[test]
    fn list_needs_a_customer_and_a_page_size_the_api_accepts() {
        assert!(Cli::try_parse_from(["orderctl", "list"]).is_err());
        assert!(
            Cli::try_parse_from(["orderctl", "list", "--customer", "c1", "--limit", "0"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "orderctl",
            "list",
            "--customer",
            "c1",
            "--limit",
            "50",
            "--all",
        ])
        .expect("parses");
        assert!(matches!(cli.command, Command::List(l) if l.all && l.limit == Some(50)));
    }

    #[test]
    fn load_needs_a_duration_or_a_count_but_not_both() {
        use commands::load::{Rate, Stop};
        assert!(Cli::try_parse_from(["orderctl", "load"]).is_err());
        assert!(
            Cli::try_parse_from(["orderctl", "load", "--count", "5", "--duration", "1s"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["orderctl", "load", "--count", "5", "--rate", "fast"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "orderctl",
            "load",
            "--rate",
            "max",
            "--concurrency",
            "4",
            "--count",
            "10",
            "--json",
        ])
        .expect("parses");
        let Command::Load(load) = cli.command else {
            panic!("load")
        };
        let options = load.options();
        assert_eq!(options.rate, Rate::Max);
        assert_eq!(options.concurrency, 4);
        assert_eq!(options.stop, Stop::Count(10));
        assert!(load.json);
        let cli = Cli::try_parse_from(["orderctl", "load", "--rate", "25", "--duration", "30s"])
            .expect("parses");
        let Command::Load(load) = cli.command else {
            panic!("load")
        };
        assert_eq!(load.options().stop, Stop::After(Duration::from_secs(30)));
        assert_eq!(load.options().rate, Rate::PerSecond(25.0));
    }

    #[test]
    fn events_needs_an_order_id_that_is_a_uuid() {
        assert!(Cli::try_parse_from(["orderctl", "events", "not-a-uuid"]).is_err());
        assert!(
            Cli::try_parse_from(["orderctl", "events", "67e55044-10b1-426f-9247-bb680e5fe0c8"])
                .is_ok()
        );
    }
}
