//! The outbox relay: publishes committed events to JetStream, at least once, in aggregate order.
//!
//! Every append writes an outbox row in the same transaction as the event, so an event is never
//! committed without being (eventually) published, even if the process dies right after the commit.
//! Events go out with `Nats-Msg-Id = event_id` (JetStream drops a republished event within its
//! duplicate window), and a row is deleted only after JetStream acknowledged its event.
//!
//! Two paths publish:
//!
//! - **Memory.** The appender hands over what each transaction inserted. The relay takes everything
//!   queued and publishes it pipelined: every aggregate's first event of the batch in one round (all
//!   sent, then all acks awaited), the second ones in the next round, and so on. Acked rows are
//!   deleted in batches by one statement, off the publishing loop. No transaction spans a publish.
//! - **Sweep**, on start, every `sweep_interval`, soon after the memory path deferred something, and
//!   once more on stop. It claims, in one `UPDATE … WHERE event_id IN (SELECT … FOR UPDATE SKIP
//!   LOCKED) RETURNING`, the rows this relay holds (deferred or claimed before) and the *ripe* rows,
//!   older than twice the publish timeout (or sweep interval, if longer), which the memory path of
//!   whatever instance wrote them evidently missed (on start: every row). The claim sets the row's
//!   `created_at` to now, which makes `created_at` the time the row was last claimed: for the next
//!   ripe period no other instance's sweep takes it (its holder renews the claim every sweep), and
//!   an instance that dies leaves it ripe again. The sweep then publishes the claimed rows in rounds
//!   like the memory path.
//!
//! **Aggregate order, with any number of instances and both paths:** version `v > 1` of an aggregate
//! is published only after its publisher has seen version `v - 1` acknowledged by JetStream: its own
//! ack (the memory path keeps a bounded map aggregate → highest version it saw acked, and a round
//! follows its chain's previous round), or `v - 1`'s outbox row being gone, since rows are deleted
//! only after an ack (the memory path asks `MIN(aggregate_version)` of the outbox for aggregates its
//! map does not know; the sweep publishes a row only in the run of versions starting at the lowest
//! one left, see [`publishable`]). So when `v` is sent, `v - 1` is already in the stream. Two
//! publishers of the same row (a claim that overlapped, a start-up sweep) only send a copy that
//! JetStream drops by its `Nats-Msg-Id`. An event that cannot go out now (a lower version still in
//! the outbox, a failed publish and the rest of its aggregate's chain) stays in the outbox, held by
//! this relay for its next sweep.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::StoredEvent;

mod outbox;
mod plan;
mod publish;

use outbox::{claim, delete_acked, lowest_versions};
pub use plan::publishable;
use plan::{chains, needs_outbox_check, plan_memory};
pub(crate) use publish::{Ack, Publisher};

/// Outbox rows claimed per sweep pass.
const CLAIM_LIMIT: i64 = 512;
/// Sweep passes in a row before the memory path gets a turn.
const PASSES_PER_SWEEP: usize = 8;
/// Events the memory path takes from its queue per batch (more when one handed-over batch is bigger).
const MEMORY_BATCH: usize = 4096;
/// Aggregates whose last acked version the relay remembers; the map is cleared when full (an
/// aggregate it forgot costs one outbox lookup).
const ACKED_CAPACITY: usize = 100_000;
/// Outbox rows the relay holds for its sweep at most; beyond, rows wait until they are ripe.
const HELD_CAPACITY: usize = 16_384;
/// First delay before a sweep retries held rows; doubles up to the sweep interval.
const HELD_RETRY: Duration = Duration::from_millis(20);
/// Wait before retrying a failed delete of acked rows.
const DELETE_RETRY: Duration = Duration::from_millis(500);

pub struct Relay {
    pub pool: PgPool,
    /// Where acked rows are deleted: a pool that plans each statement once
    /// ([`pipeline_runtime::db::keyed_pool`]).
    pub keyed: PgPool,
    pub nats: async_nats::Client,
    pub publisher: Publisher,
    /// What the appender committed; closed when the appender stops.
    pub committed: mpsc::Receiver<Vec<StoredEvent>>,
    pub sweep_interval: Duration,
}

/// What one sweep pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub claimed: usize,
    pub published: usize,
}

/// Which outbox rows a sweep claims besides those the relay holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Rows older than [`Relay::ripe`]: missed by the memory path that should have published them.
    Ripe,
    /// Every row: on start, when rows of a crashed predecessor wait.
    Everything,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("NATS is not connected")]
    Disconnected,
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
}

/// The relay's memory between batches.
struct State {
    /// Aggregate → highest version this relay saw acked.
    acked: HashMap<String, i64>,
    /// Outbox rows this relay owes a publish: deferred by the memory path or claimed by a sweep.
    held: HashSet<Uuid>,
    /// Acked event ids, to the task that deletes their rows.
    deletes: mpsc::UnboundedSender<Vec<Uuid>>,
    /// When the next sweep runs.
    next_sweep: Instant,
    /// Delay of the next retry of held rows.
    held_retry: Duration,
    /// False during an outage, so that it is logged once.
    healthy: bool,
}

/// What publishing some chains did.
#[derive(Default)]
struct Published {
    acked: Vec<(Uuid, String, i64)>,
    /// Failed, or behind a failure in their aggregate's chain.
    failed: Vec<Uuid>,
}

impl State {
    fn record(&mut self, published: Published) {
        let mut ids = Vec::with_capacity(published.acked.len());
        for (id, aggregate, version) in published.acked {
            self.held.remove(&id);
            if self.acked.len() >= ACKED_CAPACITY && !self.acked.contains_key(&aggregate) {
                self.acked.clear();
            }
            let last = self.acked.entry(aggregate).or_insert(version);
            *last = (*last).max(version);
            ids.push(id);
        }
        if !ids.is_empty() {
            // Only fails when the delete task is gone (stopping): the sweep removes the rows later.
            let _ = self.deletes.send(ids);
        }
        self.hold(published.failed);
    }

    /// Keeps rows for the next sweep, and brings that sweep forward.
    fn hold(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        let before = self.held.len();
        for id in ids {
            if self.held.len() >= HELD_CAPACITY {
                tracing::debug!("too many held outbox rows; the rest is swept when ripe");
                break;
            }
            self.held.insert(id);
        }
        if self.held.len() > before {
            self.held_retry = HELD_RETRY;
            self.next_sweep = self.next_sweep.min(Instant::now() + HELD_RETRY);
        }
    }
}

impl Relay {
    /// Outbox rows older than this were missed by the memory path of the instance that wrote them
    /// (it publishes within a publish timeout of the commit, or holds the row): any sweep takes them.
    fn ripe(&self) -> Duration {
        self.publisher.timeout.max(self.sweep_interval) * 2
    }

    /// Publishes what the appender hands over and sweeps, until `stop` is cancelled or the appender
    /// is gone; then publishes what is still queued and sweeps once more, so events committed before
    /// the stop go out.
    pub async fn run(mut self, stop: CancellationToken) {
        let (deletes, acked) = mpsc::unbounded_channel();
        let deleter = tokio::spawn(delete_acked(self.keyed.clone(), acked));
        let mut state = State {
            acked: HashMap::new(),
            held: HashSet::new(),
            deletes,
            next_sweep: Instant::now(),
            held_retry: HELD_RETRY,
            healthy: true,
        };
        // On start, every row: a predecessor may have died between commit and publish.
        self.sweep(&mut state, Scope::Everything).await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                batch = self.committed.recv() => match batch {
                    Some(batch) => self.publish_from_memory(batch, &mut state).await,
                    None => break,
                },
                () = tokio::time::sleep_until(state.next_sweep) => {
                    self.sweep(&mut state, Scope::Ripe).await;
                }
            }
        }
        while let Ok(batch) = self.committed.try_recv() {
            self.publish_from_memory(batch, &mut state).await;
        }
        self.sweep(&mut state, Scope::Ripe).await;
        // The delete task finishes the acked rows, then stops.
        drop(state);
        let _ = deleter.await;
    }

    fn connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes `first` and whatever else the appender queued.
    #[tracing::instrument(name = "outbox_memory", level = "debug", skip_all, fields(events))]
    async fn publish_from_memory(&mut self, first: Vec<StoredEvent>, state: &mut State) {
        let mut events = first;
        while events.len() < MEMORY_BATCH {
            match self.committed.try_recv() {
                Ok(more) => events.extend(more),
                Err(_) => break,
            }
        }
        tracing::Span::current().record("events", events.len());
        if !self.connected() {
            state.hold(events.iter().map(|e| e.event_id));
            return;
        }
        let chains = chains(events, &state.acked);
        let unknown: Vec<&str> = chains
            .iter()
            .filter(|(aggregate, chain)| needs_outbox_check(aggregate, chain, &state.acked))
            .map(|(aggregate, _)| aggregate.as_str())
            .collect();
        let lowest = if unknown.is_empty() {
            Some(HashMap::new())
        } else {
            match pipeline_runtime::db::retry(|| lowest_versions(&self.pool, &unknown)).await {
                Ok(lowest) => Some(lowest),
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the outbox; the sweep publishes these events");
                    None
                }
            }
        };
        let plan = plan_memory(chains, &state.acked, lowest.as_ref());
        state.hold(plan.deferred);
        let published = self.publish_chains(plan.chains).await;
        state.record(published);
    }

    /// Runs sweep passes while they make progress, a few at most. Logs a failure once per outage.
    async fn sweep(&self, state: &mut State, scope: Scope) {
        let mut more = false;
        for _ in 0..PASSES_PER_SWEEP {
            match self.sweep_pass(state, scope).await {
                Ok(pass) => {
                    if !state.healthy {
                        tracing::info!("outbox relay publishing again");
                        state.healthy = true;
                    }
                    // A pass that claimed less than its limit saw every row it may take.
                    more = pass.published > 0
                        && pass.claimed >= usize::try_from(CLAIM_LIMIT).unwrap_or(usize::MAX);
                    if !more {
                        break;
                    }
                }
                Err(err) => {
                    if state.healthy {
                        tracing::warn!(error = %err, "outbox relay cannot publish; events wait in the outbox");
                        state.healthy = false;
                    }
                    break;
                }
            }
        }
        let now = Instant::now();
        state.next_sweep = if more {
            now
        } else if state.held.is_empty() {
            state.held_retry = HELD_RETRY;
            now + self.sweep_interval
        } else {
            // Held rows mostly wait for a lower version another instance is publishing right now.
            let delay = state.held_retry;
            state.held_retry = (delay * 2).min(self.sweep_interval);
            now + delay
        };
    }

    /// Claims, publishes and deletes one batch of outbox rows.
    // Debug level: a pass runs every sweep interval whether or not there is anything to publish; each
    // publish has its own span in the trace of the event it publishes.
    #[tracing::instrument(
        name = "outbox_sweep",
        level = "debug",
        skip_all,
        fields(claimed, published)
    )]
    async fn sweep_pass(&self, state: &mut State, scope: Scope) -> Result<Pass, RelayError> {
        if !self.connected() {
            return Err(RelayError::Disconnected);
        }
        let ripe = match scope {
            Scope::Ripe => self.ripe(),
            Scope::Everything => Duration::ZERO,
        };
        let limit = usize::try_from(CLAIM_LIMIT).unwrap_or(usize::MAX);
        // A few held ids per claim keep `= ANY($2)` cheap; the rest wait for the next pass.
        let asked: Vec<Uuid> = state.held.iter().take(limit).copied().collect();
        let claimed =
            pipeline_runtime::db::retry(|| claim(&self.pool, ripe, &asked, CLAIM_LIMIT)).await?;
        if claimed.len() < limit {
            // The claim took every asked row still there; the others left the outbox (published by
            // someone) or were being claimed by another instance, which now holds them. The rows
            // claimed and not published are held again below.
            for id in &asked {
                state.held.remove(id);
            }
        }
        if claimed.is_empty() {
            return Ok(Pass::default());
        }
        let aggregates: Vec<&str> = claimed.iter().map(|(_, a, _)| a.as_str()).collect();
        // Rows held by other instances are visible here: a lower version waiting elsewhere holds
        // back this aggregate's later events.
        let lowest =
            pipeline_runtime::db::retry(|| lowest_versions(&self.pool, &aggregates)).await?;
        let ready = publishable(&claimed, &lowest);
        let events = if ready.is_empty() {
            Vec::new()
        } else {
            pipeline_runtime::db::retry(|| crate::store::events_by_ids(&self.pool, &ready)).await?
        };
        let ready_chains = chains(events, &HashMap::new()).into_values().collect();
        let published = self.publish_chains(ready_chains).await;
        let acked: HashSet<Uuid> = published.acked.iter().map(|(id, _, _)| *id).collect();
        let pass = Pass {
            claimed: claimed.len(),
            published: acked.len(),
        };
        state.record(published);
        // This relay claimed the rest: it owes their publish (and renews the claim each pass).
        state.hold(
            claimed
                .into_iter()
                .map(|(id, _, _)| id)
                .filter(|id| !acked.contains(id)),
        );
        tracing::Span::current()
            .record("claimed", pass.claimed)
            .record("published", pass.published);
        Ok(pass)
    }

    /// Publishes chains through the [`Publisher`]; a duplicate ack counts as acked (it is the copy
    /// of a publish whose ack was lost), a failure holds the rest of its chain.
    async fn publish_chains(&self, chains: Vec<Vec<StoredEvent>>) -> Published {
        let mut published = Published::default();
        let outcomes = self
            .publisher
            .publish_chains(chains, |ack| matches!(ack, Ack::Stored | Ack::Duplicate))
            .await;
        for (key, ack) in outcomes {
            match ack {
                Ack::Stored | Ack::Duplicate => published.acked.push(key),
                Ack::Failed | Ack::NotSent => published.failed.push(key.0),
            }
        }
        published
    }
}
