//! The outbox relay: publishes committed events to JetStream, at least once, in aggregate order.
//!
//! Every append writes an outbox row in the same transaction as the event, so an event is never
//! committed without being (eventually) published, even if the process dies right after the commit.
//! The relay claims rows with `FOR UPDATE SKIP LOCKED` (several event store instances share the outbox),
//! publishes them with `Nats-Msg-Id = event_id` (JetStream drops a republished event within its
//! duplicate window), and deletes a row only after JetStream acknowledged it.
//!
//! Aggregate order: a row is published only when every lower version of its aggregate has left the
//! outbox or is claimed by this same pass, and one aggregate's events are published one after another.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;
use pipeline_runtime::stream::headers;
use pipeline_runtime::tracecontext;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::model::StoredEvent;

/// Outbox rows claimed per pass.
const CLAIM_LIMIT: i64 = 512;

pub struct Relay {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub wake: Arc<Notify>,
    pub sweep_interval: Duration,
    pub publish_timeout: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub claimed: usize,
    pub published: usize,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("NATS is not connected")]
    Disconnected,
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
}

impl Relay {
    /// Publishes after every commit (woken by the appender) and sweeps every `sweep_interval`, until
    /// `stop` is cancelled; then makes one last pass, so events committed before the stop go out.
    pub async fn run(self, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(self.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy = true;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => {}
                _ = sweep.tick() => {}
            }
            self.drain(&mut healthy).await;
        }
        let _ = tokio::time::timeout(self.publish_timeout * 2, self.drain(&mut healthy)).await;
    }

    /// Runs passes while they make progress. Logs a failure once per outage, not once per pass.
    async fn drain(&self, healthy: &mut bool) {
        loop {
            match self.pass().await {
                Ok(pass) => {
                    if !*healthy {
                        tracing::info!("outbox relay publishing again");
                        *healthy = true;
                    }
                    // A pass that claimed less than its limit saw the whole outbox: stop, rather
                    // than pay a transaction for an empty pass. A commit during the pass left a
                    // wake-up behind, so nothing committed since waits for the sweep.
                    if pass.published == 0
                        || pass.claimed < usize::try_from(CLAIM_LIMIT).unwrap_or(usize::MAX)
                    {
                        return;
                    }
                }
                Err(err) => {
                    if *healthy {
                        tracing::warn!(error = %err, "outbox relay cannot publish; events wait in the outbox");
                        *healthy = false;
                    }
                    return;
                }
            }
        }
    }

    /// Claims, publishes and deletes one batch of outbox rows.
    // Debug level: a pass runs every sweep interval whether or not there is anything to publish; each
    // publish has its own span in the trace of the event it publishes.
    #[tracing::instrument(
        name = "outbox_pass",
        level = "debug",
        skip_all,
        fields(claimed, published)
    )]
    async fn pass(&self) -> Result<Pass, RelayError> {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(RelayError::Disconnected);
        }
        let pass = pipeline_runtime::db::retry(|| self.claim_and_publish()).await?;
        tracing::Span::current()
            .record("claimed", pass.claimed)
            .record("published", pass.published);
        Ok(pass)
    }

    async fn claim_and_publish(&self) -> Result<Pass, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let claimed: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT event_id, aggregate_id, aggregate_version FROM outbox \
             ORDER BY created_at, aggregate_id, aggregate_version LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(CLAIM_LIMIT)
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Pass::default());
        }
        let aggregates: Vec<&str> = claimed.iter().map(|(_, a, _)| a.as_str()).collect();
        // Rows locked by another instance are still visible here: a lower version waiting elsewhere
        // holds back this aggregate's later events.
        let lowest: HashMap<String, i64> = sqlx::query_as(
            "SELECT aggregate_id, MIN(aggregate_version) FROM outbox \
             WHERE aggregate_id = ANY($1) GROUP BY aggregate_id",
        )
        .bind(&aggregates)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let ready = publishable(&claimed, &lowest);
        let events = if ready.is_empty() {
            Vec::new()
        } else {
            crate::store::events_by_ids(&mut *tx, &ready).await?
        };
        let published = self.publish_in_order(events).await;
        if !published.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE event_id = ANY($1)")
                .bind(&published)
                .execute(&mut *tx)
                .await?;
        }
        // A failed commit leaves the rows for the next pass; JetStream drops the republished events.
        tx.commit().await?;
        Ok(Pass {
            claimed: claimed.len(),
            published: published.len(),
        })
    }

    /// Publishes each aggregate's events one after another (awaiting each acknowledgement), different
    /// aggregates concurrently. Returns the ids JetStream acknowledged; an aggregate stops at its
    /// first failure so a later version never overtakes an earlier one.
    async fn publish_in_order(&self, events: Vec<StoredEvent>) -> Vec<Uuid> {
        let mut by_aggregate: BTreeMap<String, Vec<StoredEvent>> = BTreeMap::new();
        for event in events {
            by_aggregate
                .entry(event.aggregate_id.clone())
                .or_default()
                .push(event);
        }
        let chains = by_aggregate.into_values().map(|mut chain| async move {
            chain.sort_by_key(|e| e.aggregate_version);
            let mut acked = Vec::with_capacity(chain.len());
            for event in chain {
                let event_id = event.event_id;
                match self.publish(event).await {
                    Ok(()) => acked.push(event_id),
                    Err(err) => {
                        tracing::debug!(%event_id, error = %err, "publish failed, will retry");
                        break;
                    }
                }
            }
            acked
        });
        join_all(chains).await.into_iter().flatten().collect()
    }

    /// Publishes one event under a PRODUCER span that continues the trace stored with the event and
    /// whose own context goes into the message's `traceparent`, so consumers are its children.
    async fn publish(&self, event: StoredEvent) -> anyhow::Result<()> {
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
        let result = self
            .publish_message(subject, event, &span)
            .instrument(span.clone())
            .await;
        if let Err(err) = &result {
            tracecontext::mark_error(&span, format!("{err:#}"));
        }
        result
    }

    async fn publish_message(
        &self,
        subject: String,
        event: StoredEvent,
        span: &tracing::Span,
    ) -> anyhow::Result<()> {
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
        // Replaces the stored context copied above by the publish's own.
        tracecontext::inject(span, &mut tracecontext::NatsInjector(&mut message_headers));
        let body = serde_json::to_vec(&event.into_envelope())?;
        let ack = tokio::time::timeout(self.publish_timeout, async {
            self.jetstream
                .publish_with_headers(subject, message_headers, body.into())
                .await?
                .await
                .map_err(anyhow::Error::from)
        })
        .await??;
        anyhow::ensure!(
            ack.stream == pipeline_runtime::stream::STREAM,
            "published to stream {} instead of {}",
            ack.stream,
            pipeline_runtime::stream::STREAM
        );
        Ok(())
    }
}

/// The claimed rows that may be published now: per aggregate, the run of consecutive versions that
/// starts at the lowest version still in the outbox.
pub fn publishable(claimed: &[(Uuid, String, i64)], lowest: &HashMap<String, i64>) -> Vec<Uuid> {
    let mut by_aggregate: HashMap<&str, Vec<(i64, Uuid)>> = HashMap::new();
    for (id, aggregate, version) in claimed {
        by_aggregate
            .entry(aggregate)
            .or_default()
            .push((*version, *id));
    }
    let mut ready = Vec::new();
    for (aggregate, mut rows) in by_aggregate {
        rows.sort_unstable();
        let Some(&first) = lowest.get(aggregate) else {
            continue;
        };
        for (expected, (version, id)) in (first..).zip(rows) {
            if version != expected {
                break;
            }
            ready.push(id);
        }
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(aggregate: &str, version: i64) -> (Uuid, String, i64) {
        (Uuid::new_v4(), aggregate.to_owned(), version)
    }

    #[test]
    fn an_aggregate_waits_for_a_lower_version_claimed_elsewhere() {
        let claimed = [row("a", 2), row("a", 3), row("b", 1)];
        let lowest = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        assert_eq!(publishable(&claimed, &lowest), [claimed[2].0]);
    }

    #[test]
    fn a_run_of_consecutive_versions_goes_out_together() {
        let claimed = [row("a", 3), row("a", 1), row("a", 2), row("a", 5)];
        let lowest = HashMap::from([("a".to_owned(), 1)]);
        let mut ready = publishable(&claimed, &lowest);
        ready.sort();
        let mut expected = vec![claimed[0].0, claimed[1].0, claimed[2].0];
        expected.sort();
        assert_eq!(ready, expected);
    }
}
