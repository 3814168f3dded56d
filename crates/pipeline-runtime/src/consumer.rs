//! The workers' JetStream consumer loop: ack after the effect committed, nak with a growing delay,
//! dead letters after too many deliveries, graceful stop.
//!
//! Messages are taken in batches: the loop waits for one message, then takes every message that is
//! already there, up to [`Options::concurrency`], and hands the whole batch to the handler
//! ([`run_batches`]), which can commit it in one transaction and append its events in one call. At
//! low load a batch is one message (no waiting for company); under load batches grow by themselves
//! while the previous one is handled. One batch is in hand at a time per instance, so the messages of
//! one aggregate are handled in stream order within an instance. [`run`] keeps the one-message
//! handler shape, handling a batch's messages concurrently.
//!
//! A handler gets each message decoded as an [`EventEnvelope`] and answers, per message:
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
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Jitter};
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

/// Default of `WORKER_CONCURRENCY`: the largest batch a worker takes.
pub const DEFAULT_CONCURRENCY: usize = 256;

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

    /// This failure once for each of `count` messages: a batch that failed as a whole. Each copy
    /// keeps the cause as its source, so [`is_outage`] still sees what failed.
    pub fn for_each(self, count: usize) -> Vec<Failure> {
        let (dead, err) = match self {
            Failure::Retry(err) => (false, err),
            Failure::DeadLetter(err) => (true, err),
        };
        let shared = Arc::new(err);
        (0..count)
            .map(|_| {
                let err = anyhow::Error::new(BatchFailed(Arc::clone(&shared)));
                if dead {
                    Failure::DeadLetter(err)
                } else {
                    Failure::Retry(err)
                }
            })
            .collect()
    }
}

/// The failure of a whole batch, shared by each of its messages.
#[derive(Debug)]
struct BatchFailed(Arc<anyhow::Error>);

impl std::fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the batch failed")
    }
}

impl std::error::Error for BatchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause: &(dyn std::error::Error + Send + Sync + 'static) = &**self.0;
        Some(cause)
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
    /// The CONSUMER span of this message (a child of its publish): what the handler does for this
    /// message, and the events it appends, belong under it. It closes after the ack.
    pub span: tracing::Span,
}

/// How a worker consumes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deliveries before a message that keeps failing is dead-lettered.
    pub max_deliveries: i64,
    /// Messages in hand at once by this instance: the largest batch.
    pub concurrency: usize,
    /// The event types this worker handles; other messages are acked at once, without a span or a
    /// call of the handler. `None`: every message.
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
            max_deliveries: 5,
            concurrency: DEFAULT_CONCURRENCY,
            handles: None,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
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
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliveries: i64,

    /// Messages in hand at once by this instance, taken and committed as one batch
    /// (`WORKER_CONCURRENCY`).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..))]
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
            eventstore_tls: crate::eventstore::ClientTls::default(),
            max_deliveries: 5,
            concurrency: DEFAULT_CONCURRENCY as u16,
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
            ..Options::default()
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

/// A worker's whole run with a one-message handler: consumes the durable consumer `name` (see
/// [`run`]) until `shutdown` resolves, finishes the messages in hand, then flushes what NATS still
/// holds to send.
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
    run_batches_until_stopped(client, name, options, one_at_a_time(handler), shutdown).await
}

/// [`run_until_stopped`] with a batch handler (see [`run_batches`]).
pub async fn run_batches_until_stopped<H, Fut>(
    client: async_nats::Client,
    name: &str,
    options: Options,
    handler: H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    H: Fn(Vec<Delivery>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<(), Failure>>> + Send,
{
    let spec = crate::stream::consumer(name)
        .with_context(|| format!("no consumer is defined for {name}"))?;
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let result = run_batches(client.clone(), spec, options, handler, stop).await;
    watcher.abort();
    if let Err(err) = client.flush().await {
        tracing::debug!(error = %err, "NATS flush on stop");
    }
    result
}

/// A batch handler that runs a one-message handler on every message of the batch concurrently.
fn one_at_a_time<H, Fut>(
    handler: H,
) -> impl Fn(Vec<Delivery>) -> futures::future::JoinAll<tracing::instrument::Instrumented<Fut>>
+ Send
+ Sync
+ 'static
where
    H: Fn(Delivery) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    move |deliveries: Vec<Delivery>| {
        futures::future::join_all(deliveries.into_iter().map(|delivery| {
            let span = delivery.span.clone();
            tracing::Instrument::instrument(handler(delivery), span)
        }))
    }
}

/// [`run_batches`] with a one-message handler.
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
    run_batches(client, spec, options, one_at_a_time(handler), stop).await
}

/// Consumes `spec`'s durable consumer until `stop` is cancelled, one batch at a time, then finishes
/// the batch in hand.
///
/// `handler` gets the batch's decoded messages (those of the types the worker handles) and answers
/// one outcome per message, in the same order. Each message is then settled on its own: acked,
/// `nak`ed or dead-lettered.
///
/// Waits (retrying) for the stream and the consumer to exist, so a worker may start before NATS or
/// the bootstrapper; the consumer is created with the shared definition if it is missing.
pub async fn run_batches<H, Fut>(
    client: async_nats::Client,
    spec: &ConsumerSpec,
    options: Options,
    handler: H,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    H: Fn(Vec<Delivery>) -> Fut,
    Fut: Future<Output = Vec<Result<(), Failure>>>,
{
    let js = jetstream::new(client.clone());
    let max_batch = options.concurrency.max(1);
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
            let mut messages = match pull(&consumer, max_batch).await {
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
                let next = tokio::select! {
                    () = stop.cancelled() => break 'outer,
                    next = messages.next() => next,
                };
                let first = match next {
                    Some(Ok(message)) => message,
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
                        continue;
                    }
                    None => {
                        tracing::warn!(
                            consumer = spec.durable,
                            "message stream ended, binding again"
                        );
                        continue 'outer;
                    }
                };
                lost = 0;
                // Whatever else is already here joins the batch; nothing waits for more. A message
                // stream item that is not a message ends the batch and is seen on the next turn.
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match futures::FutureExt::now_or_never(messages.next()) {
                        Some(Some(Ok(message))) => batch.push(message),
                        Some(Some(Err(err))) => {
                            tracing::debug!(error = %err, "pull consumer hiccup");
                            break;
                        }
                        Some(None) | None => break,
                    }
                }
                // Not raced with `stop`: a batch taken is finished (committed, then acked), within
                // the grace period.
                let handled = handle_batch(&js, spec.durable, &options, batch, &handler);
                let grace_over = async {
                    stop.cancelled().await;
                    tokio::time::sleep(options.grace).await;
                };
                tokio::select! {
                    () = handled => {}
                    () = grace_over => {
                        tracing::warn!(
                            consumer = spec.durable,
                            "grace period over with messages in hand; they will be redelivered"
                        );
                        break 'outer;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn pull(
    consumer: &PullConsumer,
    max_batch: usize,
) -> Result<jetstream::consumer::pull::Stream, jetstream::consumer::StreamError> {
    consumer
        .stream()
        .max_messages_per_batch(max_batch)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
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

/// Between attempts to reach the stream or the consumer: 200 ms doubling up to 2 s, so that a
/// worker started before the bootstrapper finds the consumer within 2 s of its creation.
const UNREACHABLE_BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(2),
    Jitter::None,
);

async fn warn_and_wait(attempt: u32, message: &str, stop: &CancellationToken) {
    if attempt == 1 || attempt.is_multiple_of(30) {
        tracing::warn!(attempt, "{message}; retrying");
    }
    let delay = UNREACHABLE_BACKOFF.delay(attempt);
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

/// Decodes a batch, hands the messages the worker handles to `handler` under their CONSUMER spans,
/// and settles every message with its outcome.
async fn handle_batch<H, Fut>(
    js: &jetstream::Context,
    worker: &str,
    options: &Options,
    batch: Vec<jetstream::Message>,
    handler: &H,
) where
    H: Fn(Vec<Delivery>) -> Fut,
    Fut: Future<Output = Vec<Result<(), Failure>>>,
{
    let mut handled = Vec::with_capacity(batch.len());
    let mut deliveries = Vec::with_capacity(batch.len());
    let mut settled = Vec::new();
    for message in batch {
        let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
        let envelope = match serde_json::from_slice::<EventEnvelope>(&message.payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                let reason = format!("undecodable message: {err}");
                settled.push(Settle::GiveUp(message, delivered, reason));
                continue;
            }
        };
        if options
            .handles
            .is_some_and(|types| !types.contains(&envelope.event_type.as_str()))
        {
            settled.push(Settle::Skip(message));
            continue;
        }
        let subject = message.subject.to_string();
        let span = consume_span(worker, &subject, &envelope, delivered);
        let headers = message.headers.clone().unwrap_or_default();
        // The CONSUMER span continues the trace of the publish (the relay's PRODUCER span, whose
        // context is in the headers); a message without headers falls back to the stored context.
        if !tracecontext::set_parent(&span, &tracecontext::NatsExtractor(&headers)) {
            tracecontext::set_parent(&span, &tracecontext::MapExtractor(&envelope.metadata));
        }
        deliveries.push(Delivery {
            envelope,
            subject,
            delivered,
            headers,
            span,
        });
        handled.push((message, delivered));
    }
    let spans: Vec<tracing::Span> = deliveries.iter().map(|d| d.span.clone()).collect();
    let outcomes = if deliveries.is_empty() {
        Vec::new()
    } else {
        handler(deliveries).await
    };
    let mut outcomes = outcomes.into_iter();
    let settles = handled
        .into_iter()
        .zip(spans)
        .map(|((message, delivered), span)| {
            let outcome = outcomes.next().unwrap_or_else(|| {
                Err(Failure::retry(anyhow::anyhow!(
                    "the handler gave no outcome for this message"
                )))
            });
            let settle = settle(
                js,
                worker,
                options,
                message,
                delivered,
                outcome,
                span.clone(),
            );
            tracing::Instrument::instrument(settle, span)
        });
    let others = settled.into_iter().map(|settle| async move {
        match settle {
            Settle::Skip(message) => ack(&message).await,
            Settle::GiveUp(message, delivered, reason) => {
                give_up(js, worker, &message, delivered, &reason).await;
            }
        }
    });
    futures::future::join(
        futures::future::join_all(settles),
        futures::future::join_all(others),
    )
    .await;
}

/// A message settled without the handler.
enum Settle {
    /// Of a type the worker does not handle: acked.
    Skip(jetstream::Message),
    /// Undecodable: dead-lettered.
    GiveUp(jetstream::Message, i64, String),
}

/// The CONSUMER span of one message.
fn consume_span(
    worker: &str,
    subject: &str,
    envelope: &EventEnvelope,
    delivered: i64,
) -> tracing::Span {
    tracing::info_span!(
        "consume",
        otel.name = format!("process {subject}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = worker,
        event.id = %envelope.event_id,
        event.type = %envelope.event_type,
        aggregate.id = %envelope.aggregate_id,
        aggregate.version = envelope.aggregate_version,
        delivered,
    )
}

/// Acks a message whose effect is committed. A plain ack (no confirmation round trip): an ack that
/// is lost brings the message back after its ack wait, and the idempotent handler absorbs it.
async fn ack(message: &jetstream::Message) {
    if let Err(err) = message.ack().await {
        tracing::warn!(error = %err, "ack failed; the message will be delivered again");
    }
}

async fn settle(
    js: &jetstream::Context,
    worker: &str,
    options: &Options,
    message: jetstream::Message,
    delivered: i64,
    outcome: Result<(), Failure>,
    span: tracing::Span,
) {
    let message = &message;
    match outcome {
        Ok(()) => ack(message).await,
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

        let copies = Failure::retry(anyhow::Error::from(sqlx::Error::PoolTimedOut)).for_each(3);
        assert_eq!(copies.len(), 3);
        for copy in copies {
            let Failure::Retry(err) = copy else {
                panic!("a retry stays a retry")
            };
            assert!(
                is_outage(&err),
                "a batch's outage is each message's: {err:#}"
            );
        }

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
