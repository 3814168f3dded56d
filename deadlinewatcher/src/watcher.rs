//! One sweep: the overdue open orders of the read model, each decided again on its history in the
//! event store, and cancelled there if it is still overdue.
//!
//! The read model only nominates: it may be behind (querymodelworker down or slow), so an order it
//! shows Pending may be Paid, or Approved, in the event store. The decision is always taken on the
//! order folded from its stored events, with the stored time of its last event as the start of the
//! awaited step, and the cancel is appended expecting the version it was decided on: a debit or an
//! approval that lands between the read and the append makes the append conflict, and the order is
//! decided again on its new history. The cancel's event id is derived from the order and the step
//! ([`deadline_event_id`]), so any number of watchers (or one that restarts, or retries after a lost
//! answer) append it once.

use std::collections::{HashMap, HashSet};
#[cfg(feature = "test-util")]
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};

use futures::StreamExt as _;
use order_domain::{
    DeadlineDecision, Deadlines, Due, OrderEvent, OrderStatus, Step, deadline_event_id,
    format_duration,
};
use pipeline_runtime::eventstore::{Appended, ClientError, EventStoreClient};
use pipeline_runtime::orders::{self, Cause, History, LoadError};
use pipeline_runtime::stream::EventEnvelope;
use pipeline_runtime::tracecontext;
use sqlx::PgPool;
use time::OffsetDateTime;
#[cfg(feature = "test-util")]
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::scan::{self, OpenOrder};

/// Orders read from the read model at a time.
const PAGE: i64 = 256;
/// Orders decided at once (each a history read and perhaps an append).
const CONCURRENCY: usize = 8;
/// Decisions on one order before giving up until the next sweep (each conflict is a new history).
const ATTEMPTS: u32 = 3;

/// What became of one nominated order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Cancelled: the `cancelled` event is at `version` (also when an earlier append of this very
    /// event, whose answer was lost, is found).
    Cancelled { step: Step, version: i64 },
    /// The order's history says it still has time: it moved on since the read model saw it (a
    /// debit landed, say), and the new step's deadline is `due`.
    NotDue(Due),
    /// Final in the event store: nothing is awaited.
    Closed(OrderStatus),
    /// Decided before at the version the read model still shows: not looked at again before its
    /// new deadline or before the read model moves.
    Skipped,
}

/// Why an order could not be decided this time; the next sweep tries again.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Store(#[from] ClientError),
    #[error("order {order_id} cannot be read back from the event store: {reason}")]
    Unreadable { order_id: String, reason: String },
    #[error("order {order_id} kept changing while it was being decided (3 attempts in a row)")]
    Busy { order_id: Uuid },
}

impl From<LoadError> for EnforceError {
    fn from(err: LoadError) -> Self {
        match err {
            LoadError::Store(err) => EnforceError::Store(err),
            LoadError::Unreadable { order_id, reason } => {
                EnforceError::Unreadable { order_id, reason }
            }
        }
    }
}

impl EnforceError {
    /// The event store cannot answer now: the rest of the sweep would fail the same way.
    pub fn is_outage(&self) -> bool {
        matches!(self, EnforceError::Store(err) if err.is_transient())
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Orders the read model showed overdue.
    pub candidates: usize,
    pub cancelled: usize,
    pub not_due: usize,
    pub closed: usize,
    pub skipped: usize,
    pub failed: usize,
    /// The first failure, when there was one (the sweep stops at an outage).
    pub error: Option<String>,
}

impl Sweep {
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Cancelled { .. } => self.cancelled += 1,
            Outcome::NotDue(_) => self.not_due += 1,
            Outcome::Closed(_) => self.closed += 1,
            Outcome::Skipped => self.skipped += 1,
        }
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.error.get_or_insert(error);
    }
}

/// An order decided at a version, and when that decision runs out.
#[derive(Debug, Clone, Copy)]
struct Known {
    version: i64,
    /// When to decide again though nothing moved: the new step's deadline. `None`: never (final).
    recheck_at: Option<OffsetDateTime>,
}

/// Decides and cancels overdue orders. Shared by the sweeps of one process.
pub struct Watcher {
    store: EventStoreClient,
    pool: PgPool,
    deadlines: Deadlines,
    /// Orders whose history was read while the read model showed them behind (or just decided),
    /// so that a read model that lags does not make every sweep read them again. Only orders the
    /// last complete sweep nominated are kept.
    known: Mutex<HashMap<Uuid, Known>>,
    /// Test seam, see [`Watcher::gate_next_append`].
    #[cfg(feature = "test-util")]
    gate: Mutex<Option<Arc<AppendGate>>>,
}

/// Test seam: holds the next cancel between its decision and its append, so that a test can move
/// the order meanwhile (the race of a debit against the deadline, made deterministic). Built only
/// with the `test-util` feature, which only this crate's tests turn on.
#[cfg(feature = "test-util")]
#[derive(Debug, Default)]
pub struct AppendGate {
    arrived: Notify,
    open: Notify,
}

#[cfg(feature = "test-util")]
impl AppendGate {
    /// Resolves once a cancel was decided and waits at the gate.
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }

    /// Lets the waiting append go.
    pub fn open(&self) {
        self.open.notify_one();
    }
}

impl Watcher {
    pub fn new(store: EventStoreClient, pool: PgPool, deadlines: Deadlines) -> Watcher {
        Watcher {
            store,
            pool,
            deadlines,
            known: Mutex::new(HashMap::new()),
            #[cfg(feature = "test-util")]
            gate: Mutex::new(None),
        }
    }

    /// Test seam, off unless called: the next cancel this watcher decides waits, after its
    /// decision and before its append, until the returned gate is opened.
    #[cfg(feature = "test-util")]
    pub fn gate_next_append(&self) -> Arc<AppendGate> {
        let gate = Arc::new(AppendGate::default());
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&gate));
        gate
    }

    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every order the read model shows overdue at `now`, page by page, each decided on its history.
    /// Stops early when `stop` is cancelled, when the read model cannot be read, or at the first
    /// sign that the event store is down (the next sweep tries again).
    pub async fn sweep(&self, now: OffsetDateTime, stop: &CancellationToken) -> Sweep {
        let mut report = Sweep::default();
        let mut nominated = HashSet::new();
        let mut complete = true;
        'steps: for step in Step::ALL {
            let cutoff = scan::before(now, self.deadlines.of(step));
            let mut after = None;
            loop {
                if stop.is_cancelled() {
                    complete = false;
                    break 'steps;
                }
                let page = match scan::page(&self.pool, step, cutoff, after, PAGE).await {
                    Ok(page) => page,
                    Err(err) => {
                        report.fail(format!(
                            "cannot read the open orders (ORDERS_DATABASE_URL): {err}"
                        ));
                        complete = false;
                        break 'steps;
                    }
                };
                report.candidates += page.len();
                nominated.extend(page.iter().map(|order| order.order_id));
                let full = i64::try_from(page.len()).is_ok_and(|len| len >= PAGE);
                after = page.last().map(scan::cursor);
                let mut outcomes = futures::stream::iter(&page)
                    .take_while(|_| std::future::ready(!stop.is_cancelled()))
                    .map(|order| self.enforce(order, now))
                    .buffer_unordered(CONCURRENCY);
                while let Some(outcome) = outcomes.next().await {
                    match outcome {
                        Ok(outcome) => report.count(&outcome),
                        Err(err) => {
                            report.fail(err.to_string());
                            if err.is_outage() {
                                complete = false;
                                break 'steps;
                            }
                        }
                    }
                }
                if !full {
                    break;
                }
            }
        }
        if complete {
            self.known_map().retain(|id, _| nominated.contains(id));
        }
        report
    }

    /// Decides one order the read model shows overdue at `now`, on its history in the event store;
    /// cancels it there if it is overdue.
    pub async fn enforce(
        &self,
        candidate: &OpenOrder,
        now: OffsetDateTime,
    ) -> Result<Outcome, EnforceError> {
        if self.decided_before(candidate, now) {
            return Ok(Outcome::Skipped);
        }
        let order_id = candidate.order_id;
        for attempt in 1..=ATTEMPTS {
            let history = match self.read(order_id).await {
                Ok(history) => history,
                Err(err @ EnforceError::Unreadable { .. }) => {
                    // Not going to change by reading it again: wait for the read model to move.
                    self.remember(order_id, candidate.version, None);
                    return Err(err);
                }
                Err(err) => return Err(err),
            };
            let Some(last) = history.last() else {
                return Err(EnforceError::Unreadable {
                    order_id: order_id.to_string(),
                    reason: "it has no events".to_owned(),
                });
            };
            let version = history.order.version;
            match history
                .order
                .enforce_deadline(last.created_at, now, &self.deadlines)
            {
                DeadlineDecision::Closed(status) => {
                    self.remember(order_id, version, None);
                    return Ok(Outcome::Closed(status));
                }
                DeadlineDecision::NotYet(due) => {
                    tracing::info!(
                        order.id = %order_id,
                        status = %history.order.status,
                        read_model_version = candidate.version,
                        version,
                        due_in = %format_duration(
                            std::time::Duration::try_from(due.at - now).unwrap_or_default()
                        ),
                        "not due: the order moved on since the read model saw it"
                    );
                    self.remember(order_id, version, Some(due.at));
                    return Ok(Outcome::NotDue(due));
                }
                DeadlineDecision::Cancel { due, event } => {
                    match self.append_cancel(&history, last, due, &event).await {
                        Ok(appended) => {
                            self.remember(order_id, appended.version, None);
                            return Ok(Outcome::Cancelled {
                                step: due.step,
                                version: appended.version,
                            });
                        }
                        // The order moved between the read and the append (a debit, an approval, a
                        // customer's cancel, another watcher): decide again on its new history.
                        // `AlreadyExists`: another watcher with other deadlines wrote this step's
                        // cancel with another reason; the new history shows it.
                        Err(
                            ClientError::Conflict(message) | ClientError::AlreadyExists(message),
                        ) => {
                            tracing::debug!(
                                order.id = %order_id,
                                attempt,
                                %message,
                                "the order changed while it was being cancelled; deciding again"
                            );
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            }
        }
        Err(EnforceError::Busy { order_id })
    }

    /// Appends the deadline cancel at the version it was decided on, in a span that continues the
    /// order's trace (the context stored with its last event).
    async fn append_cancel(
        &self,
        history: &History,
        last: &EventEnvelope,
        due: Due,
        event: &OrderEvent,
    ) -> Result<Appended, ClientError> {
        let order = &history.order;
        let span = tracing::info_span!(
            "deadline.cancel",
            otel.name = format!("{} deadline", due.step),
            order.id = %order.order_id,
            deadline.step = due.step.as_str(),
            deadline = %format_duration(due.deadline),
            expected_version = order.version,
            aggregate.version = tracing::field::Empty,
        );
        tracecontext::set_parent(&span, &tracecontext::MapExtractor(&last.metadata));
        // The same correlation; caused by the event that opened the step that timed out.
        let cancel = orders::new_event(
            deadline_event_id(order.order_id, due.step),
            event,
            Cause::Event(last),
        );
        #[cfg(feature = "test-util")]
        {
            let gate = self
                .gate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(gate) = gate {
                gate.arrived.notify_one();
                gate.open.notified().await;
            }
        }
        let appended = self
            .store
            .append(cancel, order.version)
            .instrument(span.clone())
            .await;
        if let Ok(appended) = &appended {
            span.record("aggregate.version", appended.version);
            tracing::info!(
                parent: &span,
                order.id = %order.order_id,
                version = appended.version,
                duplicate = appended.duplicate,
                reason = %due.reason(),
                "order cancelled: {} overdue",
                due.step
            );
        }
        appended
    }

    /// The order's stored events, folded. The read belongs to no trace: most reads lead to no
    /// action, and one that does continues the order's trace from what it read.
    async fn read(&self, order_id: Uuid) -> Result<History, EnforceError> {
        History::load_untraced(&self.store, &order_id.to_string())
            .await?
            .ok_or_else(|| EnforceError::Unreadable {
                order_id: order_id.to_string(),
                reason: "it has no events".to_owned(),
            })
    }

    fn known_map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Known>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when the order was decided at a version at least the read model's, and that decision
    /// has not run out.
    fn decided_before(&self, candidate: &OpenOrder, now: OffsetDateTime) -> bool {
        self.known_map()
            .get(&candidate.order_id)
            .is_some_and(|known| {
                candidate.version <= known.version
                    && known.recheck_at.is_none_or(|recheck| now < recheck)
            })
    }

    fn remember(&self, order_id: Uuid, version: i64, recheck_at: Option<OffsetDateTime>) {
        self.known_map().insert(
            order_id,
            Known {
                version,
                recheck_at,
            },
        );
    }
}
