//! The workers' JetStream consumer loop: ack after the effect committed, nak with a growing delay,
//! dead letters after too many deliveries, graceful stop.
//!
//! A handler gets each message decoded as an [`EventEnvelope`] and answers:
//! - `Ok(())`: its effect is committed (or was already there): the message is acked;
//! - `Err(Failure::Retry)`: a transient failure: `nak` with a delay that grows with the delivery count,
//!   and after `max_deliveries` deliveries the message goes to the dead letters — unless the failure
//!   is an outage of a dependency (the event store or a database unreachable, see [`is_outage`]):
//!   that is not the message's fault, so it is retried for as long as the outage lasts, every
//!   [`OUTAGE_MAX_DELAY`] at most, and never dead-lettered for it;
//! - `Err(Failure::DeadLetter)`: the message can never be handled: dead-lettered at once.
//!
//! A message that cannot be decoded is dead-lettered at once. Dead-lettering publishes the message to
//! `DEADLETTERS.<worker>` (with the reason in headers) and then terminates it on its consumer. This is
//! done here from the delivery count rather than with the server's `max_deliver`, which can stall a
//! consumer on nats-server 2.9.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stream::{ConsumerSpec, EventEnvelope, STREAM};
use crate::tracecontext;
use crate::{db, deadletter, eventstore};

/// The idle heartbeat each pull request asks of the consumer's leader. Two missed in a row mean
/// the request died without a word (its leader's node was killed, or it reached a consumer that had
/// no leader), and the loop pulls again instead of waiting for the request to expire (30 s). Short,
/// because after a node's death the consumer may need a few attempts until its new leader is elected.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Pause before pulling again after a pull request was lost (an election may still be going on).
const REPULL_DELAY: Duration = Duration::from_millis(250);

/// The longest `nak` delay while a dependency is down: how soon after an outage ends a message that
/// waited for it is handled.
pub const OUTAGE_MAX_DELAY: Duration = Duration::from_secs(5);

/// Whether `err` says a dependency cannot be reached (the event store or its database, a database
/// of the worker's own) rather than that this message cannot be handled: anywhere in its chain, an
/// [`eventstore::ClientError`] that is transient or a `sqlx::Error` that [`db::is_unavailable`].
pub fn is_outage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<eventstore::ClientError>()
            .is_some_and(eventstore::ClientError::is_transient)
            || cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(db::is_unavailable)
    })
}

/// What a handler reports when it could not handle a message.
#[derive(Debug)]
pub enum Failure {
    /// Try again later (database or event store down, a race lost).
    Retry(anyhow::Error),
    /// Never going to work (a message that breaks the rules): dead-letter it now.
    DeadLetter(anyhow::Error),
}

impl Failure {
    pub fn retry(err: impl Into<anyhow::Error>) -> Self {
        Failure::Retry(err.into())
    }

    pub fn dead_letter(err: impl Into<anyhow::Error>) -> Self {
        Failure::DeadLetter(err.into())
    }
}

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub envelope: EventEnvelope,
    pub subject: String,
    /// 1 on the first delivery.
    pub delivered: i64,
    pub headers: async_nats::HeaderMap,
}

/// How a worker consumes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deliveries before a message that keeps failing is dead-lettered.
    pub max_deliveries: i64,
    /// Messages handled at the same time by this instance.
    pub concurrency: usize,
    /// Delay of the first `nak`; doubled on each delivery, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// How long a stop waits for messages in hand.
    pub grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            concurrency: 16,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
    }
}

/// What a worker that consumes `ORDERS` and appends to the event store reads at start; flattened
/// into its `Config` (`#[command(flatten)]`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WorkerArgs {
    /// NATS: servers, user, TLS (`NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, `NATS_TLS_CA`).
    #[command(flatten)]
    pub nats: crate::nats::NatsArgs,

    /// The event store's gRPC address (`EVENTSTORE_URL`).
    #[arg(long, env = "EVENTSTORE_URL", default_value = "http://127.0.0.1:50051")]
    pub eventstore_url: String,

    /// Deliveries of a failing message before it is dead-lettered (`MAX_DELIVERIES`).
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliveries: i64,

    /// Messages handled at the same time by this instance (`WORKER_CONCURRENCY`).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Time limit of an event store call (and of getting a database connection, for a worker that
    /// has one), in milliseconds (`WORKER_TIMEOUT_MS`).
    #[arg(long, env = "WORKER_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub timeout_ms: u64,
}

impl WorkerArgs {
    /// The defaults, pointed at the given servers.
    pub fn new(nats_url: impl Into<String>, eventstore_url: impl Into<String>) -> Self {
        Self {
            nats: crate::nats::NatsArgs::new(nats_url),
            eventstore_url: eventstore_url.into(),
            max_deliveries: 5,
            concurrency: 16,
            timeout_ms: 5000,
        }
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
        let store =
            crate::eventstore::EventStoreClient::connect_lazy(&self.eventstore_url, self.timeout())
                .context("EVENTSTORE_URL")?;
        let nats = crate::nats::connect_in_background(&self.nats, name).await?;
        Ok((store, nats))
    }

    /// How the consumer loop runs.
    pub fn options(&self) -> Options {
        Options {
            max_deliveries: self.max_deliveries,
            concurrency: usize::from(self.concurrency),
            ..Options::default()
        }
    }
}

impl Options {
    /// The `nak` delay after the `delivered`-th delivery failed.
    pub fn delay(&self, delivered: i64) -> Duration {
        let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
        self.base_delay
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max_delay)
    }
}

/// A worker's whole run: consumes the durable consumer `name` (see [`run`]) until `shutdown`
/// resolves, finishes the messages in hand, then flushes what NATS still holds to send.
pub async fn run_until_stopped<H, Fut>(
    client: async_nats::Client,
    name: &str,
    options: Options,
    handler: H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    H: Fn(Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let spec = crate::stream::consumer(name)
        .with_context(|| format!("no consumer is defined for {name}"))?;
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let result = run(client.clone(), spec, options, handler, stop).await;
    watcher.abort();
    if let Err(err) = client.flush().await {
        tracing::debug!(error = %err, "NATS flush on stop");
    }
    result
}

/// Consumes `spec`'s durable consumer until `stop` is cancelled, then finishes the messages in hand.
///
/// Waits (retrying) for the stream and the consumer to exist, so a worker may start before NATS or
/// the bootstrapper; the consumer is created with the shared definition if it is missing.
pub async fn run<H, Fut>(
    client: async_nats::Client,
    spec: &ConsumerSpec,
    options: Options,
    handler: H,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    H: Fn(Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    let js = jetstream::new(client.clone());
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut in_hand = JoinSet::new();
    let mut attempt = 0u32;
    'outer: while !stop.is_cancelled() {
        let consumer = tokio::select! {
            () = stop.cancelled() => break,
            consumer = bind(&js, spec) => consumer,
        };
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(err) => {
                attempt += 1;
                warn_and_wait(attempt, &format!("{err:#}"), &stop).await;
                continue;
            }
        };
        // Pull requests lost in a row; the first is a warning, the rest of an outage are not.
        let mut lost = 0u32;
        'pulling: loop {
            let mut messages = match pull(&consumer).await {
                Ok(messages) => messages,
                Err(err) => {
                    attempt += 1;
                    warn_and_wait(
                        attempt,
                        &format!("cannot pull from consumer {}: {err}", spec.durable),
                        &stop,
                    )
                    .await;
                    continue 'outer;
                }
            };
            attempt = 0;
            if lost == 0 {
                tracing::info!(consumer = spec.durable, "consuming");
            }
            loop {
                // Take a permit before pulling the next message, so at most `concurrency` are in hand.
                let permit = tokio::select! {
                    () = stop.cancelled() => break 'outer,
                    permit = Arc::clone(&permits).acquire_owned() => permit.context("semaphore closed")?,
                };
                let next = tokio::select! {
                    () = stop.cancelled() => break 'outer,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        lost = 0;
                        let handler = handler.clone();
                        let options = options.clone();
                        let js = js.clone();
                        let worker = spec.durable;
                        in_hand.spawn(async move {
                            process(&js, worker, &options, message, handler).await;
                            drop(permit);
                        });
                    }
                    Some(Err(err)) if pull_lost(&err) => {
                        // The request died with the consumer's leader, or found none (an election).
                        // The client alone would wait for the request to expire, or after a
                        // reconnect for a consumer info request that goes unanswered until the
                        // election ends (up to 10 s): pull again from the same consumer, with no
                        // API request. The old stream goes first: on a reconnect it would pull
                        // too, and messages sent to it after we stop reading it would wait out
                        // their ack wait.
                        drop(messages);
                        lost += 1;
                        if lost == 1 {
                            tracing::warn!(consumer = spec.durable, error = %err, "pull request lost; pulling again");
                        } else {
                            tracing::debug!(consumer = spec.durable, error = %err, lost, "pull request lost again");
                        }
                        // While disconnected a request would only queue up: pull once connected.
                        tokio::select! {
                            () = stop.cancelled() => break 'outer,
                            () = connected_after(&client, REPULL_DELAY) => {}
                        }
                        continue 'pulling;
                    }
                    Some(Err(err)) => {
                        // A failed pull request or the like: the stream sends another by itself.
                        tracing::debug!(error = %err, "pull consumer hiccup");
                    }
                    None => {
                        tracing::warn!(
                            consumer = spec.durable,
                            "message stream ended, binding again"
                        );
                        continue 'outer;
                    }
                }
                while in_hand.try_join_next().is_some() {}
            }
        }
    }
    // Finish what is in hand: its effects commit and its acks go out before we stop.
    let finished = tokio::time::timeout(options.grace, async {
        while in_hand.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            consumer = spec.durable,
            "grace period over with messages in hand; they will be redelivered"
        );
    }
    Ok(())
}

/// A stream of the consumer's messages, whose pull requests ask for an idle heartbeat. Subscribes
/// and pulls; no JetStream API request, so it works while the consumer is between leaders.
async fn pull(
    consumer: &PullConsumer,
) -> Result<jetstream::consumer::pull::Stream, jetstream::consumer::StreamError> {
    consumer.stream().heartbeat(PULL_HEARTBEAT).messages().await
}

/// Waits `delay`, then until `client` is connected.
async fn connected_after(client: &async_nats::Client, delay: Duration) {
    tokio::time::sleep(delay).await;
    while client.connection_state() != async_nats::connection::State::Connected {
        tokio::time::sleep(REPULL_DELAY).await;
    }
}

/// Whether the pending pull request is gone: no heartbeat (its leader died) or no responder (the
/// consumer has no leader right now).
fn pull_lost(err: &MessagesError) -> bool {
    matches!(
        err.kind(),
        MessagesErrorKind::MissingHeartbeat | MessagesErrorKind::NoResponders
    )
}

async fn bind(js: &jetstream::Context, spec: &ConsumerSpec) -> anyhow::Result<PullConsumer> {
    let stream = js
        .get_stream(STREAM)
        .await
        .with_context(|| format!("stream {STREAM} not available (has the bootstrapper run?)"))?;
    stream
        .get_or_create_consumer(spec.durable, spec.config())
        .await
        .with_context(|| format!("consumer {} not available", spec.durable))
}

async fn warn_and_wait(attempt: u32, message: &str, stop: &CancellationToken) {
    if attempt == 1 || attempt.is_multiple_of(30) {
        tracing::warn!(attempt, "{message}; retrying");
    }
    let delay = Duration::from_millis(200u64.saturating_mul(u64::from(attempt.min(10))));
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

async fn process<H, Fut>(
    js: &jetstream::Context,
    worker: &str,
    options: &Options,
    message: jetstream::Message,
    handler: H,
) where
    H: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
    let subject = message.subject.to_string();
    let envelope = match serde_json::from_slice::<EventEnvelope>(&message.payload) {
        Ok(envelope) => envelope,
        Err(err) => {
            let reason = format!("undecodable message: {err}");
            give_up(js, worker, &message, delivered, &reason).await;
            return;
        }
    };
    // The CONSUMER span continues the trace of the publish (the relay's PRODUCER span, whose
    // context is in the headers); a message without headers falls back to the stored context.
    let span = tracing::info_span!(
        "consume",
        otel.name = format!("process {subject}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = worker,
        event.id = %envelope.event_id,
        event.type = %envelope.event_type,
        aggregate.id = %envelope.aggregate_id,
        aggregate.version = envelope.aggregate_version,
        delivered,
    );
    let headers = message.headers.clone().unwrap_or_default();
    if !tracecontext::set_parent(&span, &tracecontext::NatsExtractor(&headers)) {
        tracecontext::set_parent(&span, &tracecontext::MapExtractor(&envelope.metadata));
    }
    let delivery = Delivery {
        envelope,
        subject,
        delivered,
        headers,
    };
    // The span stays open through the ack, and is entered only while this task runs (a guard held
    // across an await would make other tasks on this thread its children).
    let handled = async {
        let outcome = handler(delivery).await;
        settle(js, worker, options, &message, delivered, outcome).await;
    };
    tracing::Instrument::instrument(handled, span).await;
}

async fn settle(
    js: &jetstream::Context,
    worker: &str,
    options: &Options,
    message: &jetstream::Message,
    delivered: i64,
    outcome: Result<(), Failure>,
) {
    let span = tracing::Span::current();
    match outcome {
        Ok(()) => {
            // Double ack: wait until the server took the ack, so a lost ack shows up here as a
            // redelivery later, which the idempotent handler absorbs.
            if let Err(err) = message.double_ack().await {
                tracing::warn!(error = %err, "ack not confirmed; the message may be delivered again");
            }
        }
        Err(Failure::Retry(err)) if is_outage(&err) => {
            // Not the message's fault: no delivery counts toward its dead letter while this lasts.
            tracecontext::mark_error(&span, format!("{err:#}"));
            let delay = options.delay(delivered).min(OUTAGE_MAX_DELAY);
            tracing::warn!(
                error = format!("{err:#}"),
                ?delay,
                delivered,
                "a dependency is unavailable; will retry until it is back"
            );
            nak(message, delay).await;
        }
        Err(Failure::Retry(err)) if delivered < options.max_deliveries => {
            tracecontext::mark_error(&span, format!("{err:#}"));
            let delay = options.delay(delivered);
            tracing::warn!(
                error = format!("{err:#}"),
                ?delay,
                "handling failed; will retry"
            );
            nak(message, delay).await;
        }
        Err(Failure::Retry(err)) => {
            tracecontext::mark_error(&span, format!("{err:#}"));
            let reason = format!("gave up after {delivered} deliveries: {err:#}");
            give_up(js, worker, message, delivered, &reason).await;
        }
        Err(Failure::DeadLetter(err)) => {
            tracecontext::mark_error(&span, format!("{err:#}"));
            give_up(js, worker, message, delivered, &format!("{err:#}")).await;
        }
    }
}

/// Hands the message back for redelivery after `delay`.
async fn nak(message: &jetstream::Message, delay: Duration) {
    if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(error = %err, "nak failed; the message comes back after its ack wait");
    }
}

async fn give_up(
    js: &jetstream::Context,
    worker: &str,
    message: &jetstream::Message,
    delivered: i64,
    reason: &str,
) {
    tracing::error!(worker, subject = %message.subject, delivered, reason, "dead-lettering message");
    match deadletter::publish(js, worker, message, delivered, reason).await {
        Ok(()) => {
            if let Err(err) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %err, "terminating a dead-lettered message failed; it may come back");
            }
        }
        Err(err) => {
            tracing::error!(
                error = format!("{err:#}"),
                "cannot dead-letter; will retry later"
            );
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
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

    #[test]
    fn a_dependency_that_is_down_is_an_outage_and_a_message_that_fails_is_not() {
        use anyhow::{Context as _, anyhow};
        use eventstore::ClientError;

        let store_down = anyhow::Error::from(ClientError::Unavailable("connection refused".into()));
        assert!(is_outage(&store_down));
        assert!(
            is_outage(&store_down.context("reading order 42")),
            "found under context too"
        );
        let db_down: Result<(), sqlx::Error> = Err(sqlx::Error::PoolTimedOut);
        let db_down = db_down.context("paymentsdb").expect_err("an error");
        assert!(is_outage(&db_down));

        for not_outage in [
            anyhow::Error::from(ClientError::Conflict("at version 3".into())),
            anyhow::Error::from(ClientError::Other("Internal".into())),
            anyhow!("order 42 has no events in the event store"),
            anyhow::Error::from(sqlx::Error::RowNotFound),
        ] {
            assert!(!is_outage(&not_outage), "{not_outage:#}");
        }
    }
}
