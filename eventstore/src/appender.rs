//! Group commit: concurrent appends share a transaction, each keeping its own outcome.
//!
//! A commit costs a disk flush; at 64 concurrent clients one transaction per append would cap the
//! store at the database's single-row commit rate. Appends are queued, and each of a few workers takes
//! everything queued (up to the batch size) and commits it in one transaction. A version conflict or a
//! duplicate decides only its own append; the rest of the batch commits.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::error::StoreError;
use crate::model::{Appended, NewEvent};
use crate::store;

/// How many times a batch is planned again after losing a race to another writer.
const MAX_ROUNDS: u32 = 10;

struct Job {
    event: NewEvent,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// The handle appends go through. Cheap to clone; when every clone is dropped the workers finish the
/// queued appends and stop.
#[derive(Clone)]
pub struct Appender {
    queue: mpsc::Sender<Job>,
}

/// What the workers tell the rest of the service after a commit.
#[derive(Clone)]
pub struct CommitSignals {
    /// Wakes the outbox relay.
    pub outbox: Arc<Notify>,
    /// Counts commits; streaming readers that follow new events wait on it.
    pub commits: watch::Sender<u64>,
}

impl Appender {
    /// Starts `workers` batch workers committing up to `batch_size` appends per transaction.
    pub fn start(
        pool: PgPool,
        workers: usize,
        batch_size: usize,
        signals: CommitSignals,
    ) -> (Self, JoinSet<()>) {
        let (queue, receiver) = mpsc::channel::<Job>(batch_size * workers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut tasks = JoinSet::new();
        for _ in 0..workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let pool = pool.clone();
            let signals = signals.clone();
            tasks.spawn(async move {
                while let Some(batch) = next_batch(&receiver, batch_size).await {
                    commit(&pool, batch, &signals).await;
                }
            });
        }
        (Self { queue }, tasks)
    }

    /// Appends one event; waits until its batch committed (or failed). A full queue is refused at
    /// once ([`StoreError::Overloaded`]) rather than making the caller wait for room until its deadline
    /// and then, maybe, committing after the caller gave up.
    pub async fn append(&self, event: NewEvent) -> Result<Appended, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .try_send(Job { event, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Overloaded(self.queue.max_capacity())
                }
                mpsc::error::TrySendError::Closed(_) => StoreError::ShuttingDown,
            })?;
        outcome.await.map_err(|_| StoreError::ShuttingDown)?
    }
}

/// Waits for one queued append, then takes whatever else is queued, up to `batch_size`.
async fn next_batch(receiver: &Mutex<mpsc::Receiver<Job>>, batch_size: usize) -> Option<Vec<Job>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = Vec::with_capacity(batch_size);
    batch.push(first);
    while batch.len() < batch_size {
        match receiver.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

// Debug level: a batch serves many requests of many traces, so it belongs to none of them (each
// request's own span covers its wait for the commit) and stays out of Zipkin.
#[tracing::instrument(name = "append_batch", level = "debug", skip_all, fields(batch.size = batch.len()))]
async fn commit(pool: &PgPool, batch: Vec<Job>, signals: &CommitSignals) {
    // A caller that gave up while its append was queued (deadline, disconnect) was told nothing was
    // written, so nothing is: its retry with the same event id starts afresh. Once the batch is
    // taken, a caller that leaves is too late; its append commits and the retry gets it back.
    let queued = batch.len();
    let (events, replies): (Vec<NewEvent>, Vec<_>) = batch
        .into_iter()
        .filter(|job| !job.reply.is_closed())
        .map(|job| (job.event, job.reply))
        .unzip();
    if events.len() < queued {
        tracing::debug!(
            abandoned = queued - events.len(),
            "dropped queued appends whose callers gave up"
        );
    }
    if events.is_empty() {
        return;
    }
    let mut round = 0;
    let outcomes: Vec<Result<Appended, StoreError>> = loop {
        round += 1;
        match pipeline_runtime::db::retry(|| store::try_append(pool, &events)).await {
            Ok(Some(outcomes)) => {
                if outcomes.iter().any(|o| matches!(o, Ok(a) if !a.duplicate)) {
                    signals.outbox.notify_one();
                    signals.commits.send_modify(|n| *n = n.wrapping_add(1));
                }
                break outcomes;
            }
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
                break events.iter().map(|_| Err(err())).collect();
            }
            Err(err) => {
                // An ambiguous commit lands here too: the client retries with the same event id and
                // the idempotent append answers with the version it got.
                let err = StoreError::from_sql(err);
                break events.iter().map(|_| Err(err.duplicate())).collect();
            }
        }
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // The caller may have given up (deadline, disconnect); its outcome is still committed.
        let _ = reply.send(outcome);
    }
}
