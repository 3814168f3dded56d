//! Group commit: concurrent appends share a transaction, each keeping its own outcome.
//!
//! A commit costs a disk flush; at 64 concurrent clients one transaction per append would cap the
//! store at the database's single-row commit rate. Each call (one `CreateEvent`, or one
//! `CreateEvents` with all its events) is queued as one job, and each of a few workers takes queued
//! jobs until their events fill the batch size (always at least one job whole, so a call's events
//! commit together) and commits them in one transaction. A version conflict or a duplicate decides
//! only its own event; the rest of the batch commits. What a transaction inserted goes to the outbox
//! relay from memory, so publishing needs no read of the outbox.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::error::StoreError;
use crate::model::{EventToStore, MAX_BATCH_EVENTS, StoredAt, StoredEvent};
use crate::store;

/// How many times a batch is planned again after losing a race to another writer.
const MAX_ROUNDS: u32 = 10;

type Outcomes = Vec<Result<StoredAt, StoreError>>;

/// One call's events, committed together, answered together.
struct Job {
    events: Vec<EventToStore>,
    reply: oneshot::Sender<Outcomes>,
    /// The job's room in the queue, given back when a worker takes it.
    room: OwnedSemaphorePermit,
}

/// The handle appends go through. Cheap to clone; when every clone is dropped the workers finish the
/// queued appends and stop.
#[derive(Clone)]
pub struct Appender {
    queue: mpsc::UnboundedSender<Job>,
    /// Bounds the queue in events, not calls: a `CreateEvents` of 1000 events weighs 1000.
    room: Arc<Semaphore>,
    capacity: usize,
}

/// What the workers tell the rest of the service after a commit.
#[derive(Clone)]
pub struct CommitSignals {
    /// The committed events, to the outbox relay. Never waited on: when it is full the events are
    /// left to the relay's sweep (their outbox rows are committed).
    pub relay: mpsc::Sender<Vec<StoredEvent>>,
    /// Counts commits; streaming readers that follow new events wait on it.
    pub commits: watch::Sender<u64>,
}

/// The queue, with the job that did not fit in the previous batch.
struct Queue {
    receiver: mpsc::UnboundedReceiver<Job>,
    held_over: Option<Job>,
}

impl Appender {
    /// Starts `workers` batch workers committing up to `batch_size` events per transaction.
    pub fn start(
        pool: PgPool,
        workers: usize,
        batch_size: usize,
        signals: CommitSignals,
    ) -> (Self, JoinSet<()>) {
        let workers = workers.max(1);
        // At least one whole CreateEvents call must fit, or it could never be accepted.
        let capacity = (batch_size * workers * 4).max(MAX_BATCH_EVENTS);
        let (queue, receiver) = mpsc::unbounded_channel::<Job>();
        let receiver = Arc::new(Mutex::new(Queue {
            receiver,
            held_over: None,
        }));
        let mut tasks = JoinSet::new();
        for _ in 0..workers {
            let receiver = Arc::clone(&receiver);
            let pool = pool.clone();
            let signals = signals.clone();
            tasks.spawn(async move {
                while let Some(batch) = next_batch(&receiver, batch_size).await {
                    commit(&pool, batch, &signals).await;
                }
            });
        }
        let appender = Self {
            queue,
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
        };
        (appender, tasks)
    }

    /// Appends one event; waits until its batch committed (or failed).
    pub async fn append(&self, event: EventToStore) -> Result<StoredAt, StoreError> {
        self.append_all(vec![event])
            .await?
            .pop()
            .unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Appends several events in one transaction; waits until it committed (or failed) and answers
    /// one outcome per event, in order. A full queue refuses the whole call at once
    /// ([`StoreError::Overloaded`]) rather than making the caller wait for room until its deadline
    /// and then, maybe, committing after the caller gave up.
    pub async fn append_all(&self, events: Vec<EventToStore>) -> Result<Outcomes, StoreError> {
        let expected = events.len();
        if expected == 0 {
            return Ok(Vec::new());
        }
        let weight = u32::try_from(expected).unwrap_or(u32::MAX);
        let room = Arc::clone(&self.room)
            .try_acquire_many_owned(weight)
            .map_err(|_| StoreError::Overloaded(self.capacity))?;
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Job {
                events,
                reply,
                room,
            })
            .map_err(|_| StoreError::ShuttingDown)?;
        let outcomes = outcome.await.map_err(|_| StoreError::ShuttingDown)?;
        if outcomes.len() != expected {
            // A bug: logged here, where it is found; the client sees an opaque INTERNAL.
            tracing::error!(
                outcomes = outcomes.len(),
                events = expected,
                "append answered the wrong number of outcomes"
            );
            return Err(StoreError::Internal(format!(
                "{} outcomes for {expected} events",
                outcomes.len()
            )));
        }
        Ok(outcomes)
    }
}

/// Waits for one queued job, then takes whatever else is queued while the events fit in
/// `batch_size`. The first job is always taken whole; a job that would overflow the batch is held
/// over to the next one, so one call never spans two transactions.
async fn next_batch(queue: &Mutex<Queue>, batch_size: usize) -> Option<Vec<Job>> {
    let mut queue = queue.lock().await;
    let first = match queue.held_over.take() {
        Some(job) => job,
        None => queue.receiver.recv().await?,
    };
    let mut events = first.events.len();
    let mut batch = vec![first];
    while events < batch_size {
        match queue.receiver.try_recv() {
            Ok(job) if events + job.events.len() <= batch_size => {
                events += job.events.len();
                batch.push(job);
            }
            Ok(job) => {
                queue.held_over = Some(job);
                break;
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

// Debug level: a batch serves many requests of many traces, so it belongs to none of them (each
// request's own span covers its wait for the commit) and stays out of Zipkin.
#[tracing::instrument(name = "append_batch", level = "debug", skip_all, fields(batch.jobs = batch.len()))]
async fn commit(pool: &PgPool, batch: Vec<Job>, signals: &CommitSignals) {
    // A caller that gave up while its append was queued (deadline, disconnect) was told nothing was
    // written, so nothing is: its retry with the same event id starts afresh. Once the batch is
    // taken, a caller that leaves is too late; its append commits and the retry gets it back.
    let queued = batch.len();
    let mut events = Vec::new();
    let mut replies = Vec::with_capacity(queued);
    for job in batch {
        // The job left the queue: its room goes back.
        drop(job.room);
        if job.reply.is_closed() {
            continue;
        }
        replies.push((job.reply, job.events.len()));
        events.extend(job.events);
    }
    if replies.len() < queued {
        tracing::debug!(
            abandoned = queued - replies.len(),
            "dropped queued appends whose callers gave up"
        );
    }
    if events.is_empty() {
        return;
    }
    let mut round = 0;
    let (mut outcomes, created_at): (Outcomes, _) = loop {
        round += 1;
        match pipeline_runtime::db::retry(|| store::try_append(pool, &events)).await {
            Ok(Some(committed)) => break (committed.outcomes, committed.created_at),
            Ok(None) if round < MAX_ROUNDS => {
                tracing::debug!(
                    round,
                    "lost a race to another writer, planning the batch again"
                );
                tokio::time::sleep(pipeline_runtime::db::backoff(round)).await;
            }
            Ok(None) => {
                let err = || {
                    StoreError::Unavailable("appends kept conflicting with other writers".into())
                };
                break (events.iter().map(|_| Err(err())).collect(), None);
            }
            Err(err) => {
                // An ambiguous commit lands here too: the client retries with the same event id and
                // the idempotent append answers with the version it got.
                let err = StoreError::from_sql(err);
                break (events.iter().map(|_| Err(err.duplicate())).collect(), None);
            }
        }
    };
    if let Some(created_at) = created_at {
        signals.commits.send_modify(|n| *n = n.wrapping_add(1));
        hand_to_relay(&signals.relay, events, &outcomes, created_at);
    }
    // Each caller gets its own slice of the outcomes, in the order of its events.
    for (reply, count) in replies.into_iter().rev() {
        let tail = outcomes.split_off(outcomes.len().saturating_sub(count));
        // The caller may have given up (deadline, disconnect); its outcome is still committed.
        let _ = reply.send(tail);
    }
}

/// Gives the events the transaction inserted to the relay, without waiting: a full channel means the
/// relay is far behind, and the sweep publishes these from their outbox rows.
fn hand_to_relay(
    relay: &mpsc::Sender<Vec<StoredEvent>>,
    events: Vec<EventToStore>,
    outcomes: &Outcomes,
    created_at: time::OffsetDateTime,
) {
    let inserted: Vec<StoredEvent> = events
        .into_iter()
        .zip(outcomes)
        .filter_map(|(event, outcome)| match outcome {
            Ok(appended) if !appended.duplicate => {
                Some(StoredEvent::from_new(event, appended.version, created_at))
            }
            _ => None,
        })
        .collect();
    if inserted.is_empty() {
        return;
    }
    if let Err(mpsc::error::TrySendError::Full(dropped)) = relay.try_send(inserted) {
        tracing::debug!(
            events = dropped.len(),
            "relay queue full; the sweep publishes these events"
        );
    }
}
