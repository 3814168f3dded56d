//! The one way an event goes to JetStream: its subject, headers and body, and the rounds that keep
//! an aggregate's versions in order. The relay and `eventstore republish` both publish through it,
//! so a republished event is the very message the relay sent.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;
use pipeline_runtime::stream::headers;
use pipeline_runtime::tracecontext;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::model::StoredEvent;

/// Publishes awaiting their ack at once (async-nats allows 5000 before `publish` itself waits).
const MAX_IN_FLIGHT: usize = 1024;

/// What became of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// JetStream stored the message.
    Stored,
    /// JetStream acknowledged it as a duplicate of a `Nats-Msg-Id` inside its duplicate window and
    /// did not store it (the id is in the stream, or was until a delete or purge).
    Duplicate,
    /// No ack: the publish failed or timed out.
    Failed,
    /// Not sent: an earlier version of its aggregate was not accepted.
    NotSent,
}

/// An event's identity as the publisher reports it.
pub type Key = (Uuid, String, i64);

/// Sends events to JetStream with `Nats-Msg-Id = event_id`.
#[derive(Clone)]
pub struct Publisher {
    pub jetstream: jetstream::Context,
    /// For the send and for the ack, each.
    pub timeout: Duration,
}

impl Publisher {
    /// Publishes chains (each one aggregate's consecutive versions, in order) in rounds: the first
    /// event of every chain, all acks awaited, then the second ones, and so on. A chain stops at the
    /// first outcome `accept` refuses, so a later version never overtakes an earlier one; the rest of
    /// that chain is answered [`Ack::NotSent`].
    pub async fn publish_chains(
        &self,
        chains: Vec<Vec<StoredEvent>>,
        accept: impl Fn(Ack) -> bool,
    ) -> Vec<(Key, Ack)> {
        let mut chains: Vec<VecDeque<StoredEvent>> =
            chains.into_iter().map(VecDeque::from).collect();
        let mut outcomes = Vec::new();
        loop {
            let round: Vec<(usize, StoredEvent)> = chains
                .iter_mut()
                .enumerate()
                .filter_map(|(index, chain)| chain.pop_front().map(|event| (index, event)))
                .collect();
            if round.is_empty() {
                return outcomes;
            }
            let mut round = round.into_iter().peekable();
            while round.peek().is_some() {
                let part: Vec<(usize, StoredEvent)> = round.by_ref().take(MAX_IN_FLIGHT).collect();
                for (index, key, ack) in self.publish_round(part).await {
                    outcomes.push((key, ack));
                    if !accept(ack) {
                        outcomes.extend(chains[index].drain(..).map(|e| {
                            (
                                (e.event_id, e.aggregate_id, e.aggregate_version),
                                Ack::NotSent,
                            )
                        }));
                    }
                }
            }
        }
    }

    /// Sends every event, then awaits every ack. Answers (chain index, key, outcome).
    async fn publish_round(&self, events: Vec<(usize, StoredEvent)>) -> Vec<(usize, Key, Ack)> {
        let mut pending = Vec::with_capacity(events.len());
        for (index, event) in events {
            let key = (
                event.event_id,
                event.aggregate_id.clone(),
                event.aggregate_version,
            );
            let span = publish_span(&event);
            let sent = self.send(event, &span).instrument(span.clone()).await;
            pending.push((index, key, span, sent));
        }
        join_all(pending.into_iter().map(|(index, key, span, sent)| {
            async move {
                let result = match sent {
                    Ok(ack) => self.await_ack(ack).instrument(span.clone()).await,
                    Err(err) => Err(err),
                };
                let ack = match result {
                    Ok(true) => Ack::Duplicate,
                    Ok(false) => Ack::Stored,
                    Err(err) => {
                        tracing::debug!(event_id = %key.0, error = %format!("{err:#}"), "publish failed");
                        tracecontext::mark_error(&span, format!("{err:#}"));
                        Ack::Failed
                    }
                };
                (index, key, ack)
            }
        }))
        .await
    }

    /// Sends one event; the answer is the future of its ack. The stored trace context is replaced
    /// in the headers by the publish span's, so consumers are children of the publish.
    async fn send(
        &self,
        event: StoredEvent,
        span: &tracing::Span,
    ) -> anyhow::Result<jetstream::context::PublishAckFuture> {
        let subject = event.subject();
        let mut message_headers = async_nats::HeaderMap::new();
        message_headers.insert(headers::MSG_ID, event.event_id.to_string().as_str());
        message_headers.insert(headers::EVENT_TYPE, event.event_type.as_str());
        message_headers.insert(headers::AGGREGATE_ID, event.aggregate_id.as_str());
        message_headers.insert(headers::AGGREGATE_TYPE, event.aggregate_type.as_str());
        message_headers.insert(
            headers::AGGREGATE_VERSION,
            event.aggregate_version.to_string().as_str(),
        );
        for (key, value) in &event.metadata {
            message_headers.insert(key.as_str(), value.as_str());
        }
        tracecontext::inject(span, &mut tracecontext::NatsInjector(&mut message_headers));
        let body = serde_json::to_vec(&event.into_envelope())?;
        let ack = tokio::time::timeout(
            self.timeout,
            self.jetstream
                .publish_with_headers(subject, message_headers, body.into()),
        )
        .await??;
        Ok(ack)
    }

    /// Awaits the ack; answers whether JetStream called the message a duplicate.
    async fn await_ack(&self, ack: jetstream::context::PublishAckFuture) -> anyhow::Result<bool> {
        let ack = tokio::time::timeout(self.timeout, ack.into_future()).await??;
        anyhow::ensure!(
            ack.stream == pipeline_runtime::stream::STREAM,
            "published to stream {} instead of {}",
            ack.stream,
            pipeline_runtime::stream::STREAM
        );
        Ok(ack.duplicate)
    }
}

/// The PRODUCER span of one publish, a child of the trace stored with the event.
fn publish_span(event: &StoredEvent) -> tracing::Span {
    let subject = event.subject();
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {subject}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %event.event_id,
        event.type = %event.event_type,
        order.id = %event.aggregate_id,
        aggregate.version = event.aggregate_version,
    );
    tracecontext::set_parent(&span, &tracecontext::MapExtractor(&event.metadata));
    span
}
