//! A worker's consumer settings: how many messages a batch takes, how many batches are in hand, how
//! redeliveries are spaced, when a message goes to the dead letters; and the command-line arguments
//! every worker shares for them.

use std::time::Duration;

use anyhow::Context as _;

use crate::backoff::{Backoff, Jitter};

/// Default of `WORKER_CONCURRENCY`: the largest batch a worker takes.
pub const DEFAULT_CONCURRENCY: usize = 256;
/// Default of `WORKER_LANES`: batches in hand at once, each of other aggregates. One on this
/// project's 2-core machine, where more lanes made smaller batches: more CPU per order and a longer
/// tail at 500 orders/s (BENCHMARKS.md); more where a batch waits more than it works.
pub const DEFAULT_LANES: usize = 1;
/// Default of `MAX_DELIVERIES`: deliveries of a failing message before it is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: i64 = 5;

/// How a worker consumes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deliveries before a message that keeps failing is dead-lettered.
    pub max_deliveries: i64,
    /// The largest batch.
    pub concurrency: usize,
    /// Batches in hand at once; the messages of one aggregate all go to the same one, in order.
    pub lanes: usize,
    /// The event types this worker handles. A message on the subject of another type is acked
    /// as it arrives, undecoded, and takes no place in a batch; one that is only found to be of
    /// another type once decoded is acked without a span or a call of the handler. `None`: the
    /// types of the consumer's [`crate::stream::ConsumerSpec::handles`], or every message if it
    /// names none.
    pub handles: Option<&'static [&'static str]>,
    /// Delay of the first `nak`; doubled on each delivery, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// How long a stop waits for messages in hand.
    pub grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            concurrency: DEFAULT_CONCURRENCY,
            lanes: DEFAULT_LANES,
            handles: None,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// The `nak` delay after the `delivered`-th delivery failed: `base_delay` doubled on each
    /// delivery, up to `max_delay`, without jitter (the broker spreads redeliveries itself).
    pub fn delay(&self, delivered: i64) -> Duration {
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        Backoff::new(self.base_delay, self.max_delay, Jitter::None).delay(attempt)
    }
}

/// What a worker that consumes `ORDERS` and appends to the event store reads at start; flattened
/// into its `Config` (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// NATS: servers, user, TLS (`NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TLS_CA`).
    #[command(flatten)]
    pub nats: crate::nats::NatsArgs,

    /// The event store's gRPC address (`EVENTSTORE_URL`).
    #[arg(long, env = "EVENTSTORE_URL", default_value = "http://127.0.0.1:50051")]
    pub eventstore_url: String,

    /// How the event store's certificate is checked (`EVENTSTORE_TLS_CA`).
    #[command(flatten)]
    pub eventstore_tls: crate::eventstore::ClientTls,

    /// Deliveries of a failing message before it is dead-lettered (`MAX_DELIVERIES`).
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = DEFAULT_MAX_DELIVERIES, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliveries: i64,

    /// The largest batch: messages taken and committed together (`WORKER_CONCURRENCY`).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Batches in hand at once (`WORKER_LANES`); every message of an order goes to the same one,
    /// so an order's messages are still handled one after the other, in stream order.
    #[arg(long, env = "WORKER_LANES", default_value_t = DEFAULT_LANES as u8, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub lanes: u8,

    /// Time limit of an event store call (and of getting a database connection, for a worker that
    /// has one), in milliseconds (`WORKER_TIMEOUT_MS`).
    #[arg(long, env = "WORKER_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub timeout_ms: u64,
}

impl WorkerArgs {
    /// The command line's defaults (as in an empty environment), pointed at the given servers.
    pub fn new(nats_url: impl Into<String>, eventstore_url: impl Into<String>) -> Self {
        let mut args: Self = crate::cli::arg_defaults();
        args.nats.url = secrecy::SecretString::from(nats_url.into());
        args.eventstore_url = eventstore_url.into();
        args
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// A lazy event store client and a NATS connection made in the background, as `name`: neither
    /// server needs to be up yet. An error names the variable at fault.
    pub async fn connect(
        &self,
        name: &str,
    ) -> anyhow::Result<(crate::eventstore::EventStoreClient, async_nats::Client)> {
        let store = crate::eventstore::EventStoreClient::connect_lazy_with(
            &self.eventstore_url,
            self.timeout(),
            &self.eventstore_tls,
        )
        .context("EVENTSTORE_URL")?;
        let nats = crate::nats::connect_in_background(&self.nats, name).await?;
        Ok((store, nats))
    }

    /// How the consumer loop runs.
    pub fn options(&self) -> Options {
        Options {
            max_deliveries: self.max_deliveries,
            concurrency: usize::from(self.concurrency),
            lanes: usize::from(self.lanes),
            ..Options::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_grows_and_is_capped() {
        let options = Options::default();
        assert_eq!(options.delay(1), Duration::from_millis(500));
        assert_eq!(options.delay(2), Duration::from_secs(1));
        assert_eq!(options.delay(3), Duration::from_secs(2));
        assert_eq!(options.delay(100), Duration::from_secs(30));
    }
}
