//! The workers' JetStream consumer loop: ack after the effect committed, nak with a growing delay,
//! dead letters after too many deliveries, graceful stop.
//!
//! Messages are taken in batches: each message goes to one of [`Options::lanes`] lanes, chosen by
//! its aggregate; a lane waits for one message, then takes every message already queued for it, up
//! to [`Options::concurrency`], and hands the whole batch to the handler ([`run_batches`]), which can
//! commit it in one transaction and append its events in one call. At low load a batch is one
//! message (no waiting for company); under load batches grow by themselves while the previous one is
//! handled. Each lane has one batch in hand at a time, and every message of an aggregate goes to the
//! same lane, so the messages of one aggregate are handled in stream order within an instance, while
//! the other lanes' batches go on: a message that arrives during a batch waits only for its own
//! lane.
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
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind};
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, Jitter};
use crate::stream::{ConsumerSpec, EventEnvelope, STREAM};
use crate::tracecontext;

mod options;
mod settle;

pub use options::{
    DEFAULT_CONCURRENCY, DEFAULT_LANES, DEFAULT_MAX_DELIVERIES, Options, WorkerArgs,
};
pub use settle::{Failure, OUTAGE_MAX_DELAY, is_outage};
use settle::{ack, give_up, settle};

/// The idle heartbeat each pull request asks of the consumer's leader. Two missed in a row mean
/// the request died without a word (its leader's node was killed, or it reached a consumer that had
/// no leader), and the loop pulls again instead of waiting for the request to expire (30 s). Short,
/// because after a node's death the consumer may need a few attempts until its new leader is elected.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Pause before pulling again after a pull request was lost (an election may still be going on).
const REPULL_DELAY: Duration = Duration::from_millis(250);

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

/// A worker's whole run: consumes the durable consumer `name` (see [`run_batches`]) until
/// `shutdown` resolves, finishes the batch in hand, then flushes what NATS still holds to send.
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

/// Consumes `spec`'s durable consumer until `stop` is cancelled, a batch at a time per lane, then
/// finishes the batches in hand.
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
    let lanes = options.lanes.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..lanes)
        .map(|_| mpsc::channel::<Incoming>(max_batch))
        .unzip();
    let working = futures::future::join_all(receivers.into_iter().map(|receiver| {
        lane(
            receiver,
            &js,
            spec.durable,
            &options,
            &handler,
            &stop,
            max_batch,
        )
    }));
    let dispatching = dispatch(
        &client,
        &js,
        spec,
        max_batch,
        options.handles.or(spec.handles),
        senders,
        &stop,
    );
    futures::future::join(dispatching, working).await;
    Ok(())
}

/// A delivered message with its body decoded (or why it could not be).
struct Incoming {
    message: jetstream::Message,
    envelope: Result<EventEnvelope, String>,
}

impl Incoming {
    fn new(message: jetstream::Message) -> Self {
        let envelope = serde_json::from_slice::<EventEnvelope>(&message.payload)
            .map_err(|err| format!("undecodable message: {err}"));
        Self { message, envelope }
    }

    /// The lane of `lanes` this message goes to: the same for every message of its aggregate.
    fn lane(&self, lanes: usize) -> usize {
        match &self.envelope {
            Ok(envelope) => lane_of(&envelope.aggregate_id, lanes),
            Err(_) => 0,
        }
    }
}

/// The lane of an aggregate's messages.
fn lane_of(aggregate_id: &str, lanes: usize) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    aggregate_id.hash(&mut hasher);
    usize::try_from(hasher.finish() % lanes.max(1) as u64).unwrap_or(0)
}

/// Pulls from `spec`'s durable consumer until `stop` is cancelled and hands each message to its
/// lane, waiting when the lane is full; acks at once, undecoded, a message whose subject names a
/// type the worker does not handle (`handles`), so that it never takes a place in a batch. Binds
/// again (and pulls again) after losing the consumer.
async fn dispatch(
    client: &async_nats::Client,
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    max_batch: usize,
    handles: Option<&[&str]>,
    lanes: Vec<mpsc::Sender<Incoming>>,
    stop: &CancellationToken,
) {
    let mut attempt = 0u32;
    'outer: while !stop.is_cancelled() {
        let consumer = tokio::select! {
            () = stop.cancelled() => break,
            consumer = bind(js, spec) => consumer,
        };
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(err) => {
                attempt += 1;
                warn_and_wait(attempt, &format!("{err:#}"), stop).await;
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
                        stop,
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
                let message = match next {
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
                            () = connected_after(client, REPULL_DELAY) => {}
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
                if !handled(handles, &message.subject) {
                    ack(&message).await;
                    continue;
                }
                let incoming = Incoming::new(message);
                let lane = &lanes[incoming.lane(lanes.len())];
                tokio::select! {
                    () = stop.cancelled() => break 'outer,
                    sent = lane.send(incoming) => if sent.is_err() {
                        // A lane stops only when the grace period is over.
                        break 'outer;
                    },
                }
            }
        }
    }
}

/// One lane: takes what is queued for it as one batch (at least one message, at most `max_batch`),
/// has it handled and settled, and again, until `stop` is cancelled. A batch taken is finished
/// (committed, then acked) within the grace period; what is still queued when `stop` comes is left
/// unacknowledged, for the consumer to deliver again.
async fn lane<H, Fut>(
    mut queue: mpsc::Receiver<Incoming>,
    js: &jetstream::Context,
    worker: &str,
    options: &Options,
    handler: &H,
    stop: &CancellationToken,
    max_batch: usize,
) where
    H: Fn(Vec<Delivery>) -> Fut,
    Fut: Future<Output = Vec<Result<(), Failure>>>,
{
    loop {
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            first = queue.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        // Whatever else is already queued joins the batch; nothing waits for more.
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(incoming) => batch.push(incoming),
                Err(_) => break,
            }
        }
        // Not raced with `stop`: a batch taken is finished (committed, then acked), within the
        // grace period.
        let handled = handle_batch(js, worker, options, batch, handler);
        let grace_over = async {
            stop.cancelled().await;
            tokio::time::sleep(options.grace).await;
        };
        tokio::select! {
            () = handled => {}
            () = grace_over => {
                tracing::warn!(
                    consumer = worker,
                    "grace period over with messages in hand; they will be redelivered"
                );
                return;
            }
        }
    }
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

/// Whether a message on `subject` may be of a type in `handles` (`None`: every type). Only a
/// subject of the stream that names another type (`ORDERS.<type>`) is not; the handler's check of
/// the decoded type stays for the rest.
fn handled(handles: Option<&[&str]>, subject: &str) -> bool {
    let Some(handles) = handles else {
        return true;
    };
    subject
        .strip_prefix(STREAM)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_none_or(|event_type| handles.contains(&event_type))
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
        .get_or_create_consumer(spec.durable, spec.config_for(&js.client()))
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
    batch: Vec<Incoming>,
    handler: &H,
) where
    H: Fn(Vec<Delivery>) -> Fut,
    Fut: Future<Output = Vec<Result<(), Failure>>>,
{
    let mut handled = Vec::with_capacity(batch.len());
    let mut deliveries = Vec::with_capacity(batch.len());
    let mut settled = Vec::new();
    for Incoming { message, envelope } in batch {
        let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
        let envelope = match envelope {
            Ok(envelope) => envelope,
            Err(reason) => {
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

#[cfg(test)]
mod tests {
    use super::handled;

    #[test]
    fn only_a_stream_subject_naming_another_type_is_not_handled() {
        let handles: &[&str] = &["created", "cancelled"];
        assert!(handled(Some(handles), "ORDERS.created"));
        assert!(handled(Some(handles), "ORDERS.cancelled"));
        assert!(!handled(Some(handles), "ORDERS.approved"));
        assert!(!handled(Some(handles), "ORDERS.createdx"));
        // Not a subject of the stream's form: decoded, and judged by its type.
        assert!(handled(Some(handles), "ORDERS"));
        assert!(handled(Some(handles), "OTHER.approved"));
        assert!(handled(None, "ORDERS.approved"));
    }
}
