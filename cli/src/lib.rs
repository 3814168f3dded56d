#![doc = include_str!("../README.md")]

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;

pub mod commands;

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
    /// NATS servers, comma-separated (`NATS_URL`).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,

    /// The event store's gRPC endpoint (`EVENTSTORE_URL`).
    #[arg(
        long,
        env = "EVENTSTORE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub eventstore_url: String,
}

impl Endpoints {
    /// JetStream on `nats_url`; fails after [`TIMEOUT`] if no server answers.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        let client = pipeline_runtime::nats::connect(&self.nats_url, "orderctl", TIMEOUT)
            .await
            // The outer messages repeat the URL; the cause is enough.
            .map_err(|err| {
                anyhow::anyhow!(
                    "cannot reach NATS at {}: {}",
                    self.nats_url,
                    err.root_cause()
                )
            })?;
        Ok(async_nats::jetstream::new(client))
    }

    /// A client of the event store at `eventstore_url`.
    pub fn event_store(&self) -> anyhow::Result<pipeline_runtime::eventstore::EventStoreClient> {
        pipeline_runtime::eventstore::EventStoreClient::connect_lazy(&self.eventstore_url, TIMEOUT)
            .context("EVENTSTORE_URL")
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List and replay the messages workers gave up on.
    #[command(subcommand)]
    DeadLetters(commands::dead_letters::DeadLetters),
    /// Print an order's history from the event store.
    Events(commands::events::Events),
}

impl Cli {
    /// Runs the command, writing its report to `out`.
    pub async fn run(&self, out: &mut impl Write) -> anyhow::Result<()> {
        match &self.command {
            Command::DeadLetters(command) => command.run(&self.endpoints, out).await,
            Command::Events(command) => command.run(&self.endpoints, out).await,
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
    fn events_needs_an_order_id_that_is_a_uuid() {
        assert!(Cli::try_parse_from(["orderctl", "events", "not-a-uuid"]).is_err());
        assert!(
            Cli::try_parse_from(["orderctl", "events", "67e55044-10b1-426f-9247-bb680e5fe0c8"])
                .is_ok()
        );
    }
}
