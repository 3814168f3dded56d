//! Applies order events to the read model, exactly once each and in version order.
//!
//! The row's `version` is the aggregate version of the last event applied. An event is applied only
//! at `version + 1`; one at or below it is a duplicate (a redelivery, a replay) and changes nothing.
//! An event further ahead means the ones in between were not applied yet (lost, or still on their
//! way): they are read from the event store and applied first, in the same transaction, so the
//! worker never waits for them.
//!
//! The row is computed by the domain (`Order::from_created`, `Order::apply`), so the read model can
//! only hold states the order's state machine allows; an event it refuses is dead-lettered.

use std::fmt;
use std::str::FromStr as _;
use std::sync::Arc;

use order_domain::{AGGREGATE_TYPE, FoldError, Money, Order, OrderEvent, OrderStatus};
use order_readmodel::{OrderRow, order_columns};
use pipeline_runtime::db;
use pipeline_runtime::eventstore::{ClientError, EventStoreClient};
use pipeline_runtime::stream::{EventEnvelope, headers};
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::batch::Written;
use crate::trace;

/// How many times a projection starts over after losing a race or fetching a gap, before it gives
/// the message back for a later delivery.
const MAX_ROUNDS: usize = 5;

/// What projecting one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The row moved from version `from` to `to` (`from` 0: the order was inserted). `to - from > 1`
    /// when a gap was filled from the event store.
    Applied { from: i64, to: i64 },
    /// The row was already at or past the event's version: nothing changed.
    Duplicate { stored: i64 },
}

/// Why an event could not be projected.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event can never be applied (not an order event, undecodable, refused by the state
    /// machine): dead-letter it.
    #[error("event refused: {0}")]
    Refused(String),
    /// The read model's database failed; trying again later may work.
    #[error("read model database: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store could not give the missing events; trying again later may work.
    #[error("filling a gap from the event store: {0}")]
    EventStore(#[from] ClientError),
    /// Something that should pass on its own (a race lost repeatedly, an event store behind).
    #[error("{0}")]
    Transient(String),
    /// The transaction of a batch failed with the database unavailable: every event that took part
    /// gets this error. The `sqlx::Error` stays in the source chain, so the consumer sees an outage.
    #[error(transparent)]
    BatchDatabase(#[from] BatchDatabaseError),
}

/// One database error shared by the events of a batch (`sqlx::Error` is not `Clone`).
#[derive(Debug, Clone)]
pub struct BatchDatabaseError(Arc<sqlx::Error>);

impl BatchDatabaseError {
    pub fn new(err: sqlx::Error) -> Self {
        Self(Arc::new(err))
    }

    pub fn error(&self) -> &sqlx::Error {
        &self.0
    }
}

impl fmt::Display for BatchDatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The error itself is the source: `{:#}` prints it once, after this.
        f.write_str("read model database (batch transaction)")
    }
}

impl std::error::Error for BatchDatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// An event decoded, with the envelope it came in.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub(crate) envelope: EventEnvelope,
    pub(crate) event: OrderEvent,
}

impl Decoded {
    fn new(envelope: EventEnvelope) -> Result<Decoded, ProjectionError> {
        let event = OrderEvent::decode(&envelope.event_type, &envelope.event_data)
            .map_err(|err| ProjectionError::Refused(err.to_string()))?;
        Ok(Decoded { envelope, event })
    }

    pub(crate) fn version(&self) -> i64 {
        self.envelope.aggregate_version
    }

    /// The trace id of the event's `traceparent`, kept on the row its `created` inserts.
    pub(crate) fn trace_id(&self) -> Option<String> {
        self.envelope
            .metadata
            .get(headers::TRACEPARENT)
            .and_then(|traceparent| trace::trace_id(traceparent))
    }
}

/// The order the envelope belongs to and its event, or why it can never be projected.
pub(crate) fn validate(envelope: EventEnvelope) -> Result<(Uuid, Decoded), ProjectionError> {
    if envelope.aggregate_type != AGGREGATE_TYPE {
        return Err(ProjectionError::Refused(format!(
            "aggregate type `{}` is not `{AGGREGATE_TYPE}`",
            envelope.aggregate_type
        )));
    }
    let order_id = Uuid::parse_str(&envelope.aggregate_id).map_err(|_| {
        ProjectionError::Refused(format!(
            "aggregate id `{}` is not a UUID",
            envelope.aggregate_id
        ))
    })?;
    if envelope.aggregate_version < 1 {
        return Err(ProjectionError::Refused(format!(
            "aggregate version {} is not positive",
            envelope.aggregate_version
        )));
    }
    Ok((order_id, Decoded::new(envelope)?))
}

/// Applies the next event of order `order_id` to `order` (`None`: not created yet) by the domain's
/// rules, or says why the state machine refuses it. On error `order` is unchanged.
pub(crate) fn fold(
    order: &mut Option<Order>,
    order_id: Uuid,
    event: &OrderEvent,
) -> Result<(), String> {
    match (order.as_mut(), event) {
        (None, OrderEvent::Created(c)) => {
            if c.order_id != order_id {
                return Err(format!(
                    "`created` of order {} was stored under aggregate {order_id}",
                    c.order_id
                ));
            }
            *order = Some(Order::from_created(c));
            Ok(())
        }
        (None, other) => Err(FoldError::NotCreatedFirst {
            event_type: other.event_type(),
        }
        .to_string()),
        (Some(order), event) => order.apply(event).map_err(|err| err.to_string()),
    }
}

/// What one transaction found.
enum Step {
    Done(Outcome),
    /// Events `stored + 1 ..` before the delivered one are needed and were not at hand.
    Gap {
        stored: i64,
    },
    /// Another delivery changed the row between our read and our write: start over.
    Raced,
    Refused(String),
}

/// The read model writer: a pool of ordersdb and a client of the event store (for gaps).
#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    events: EventStoreClient,
    written: Arc<Written>,
}

impl Projector {
    pub fn new(pool: PgPool, events: EventStoreClient) -> Self {
        Self {
            pool,
            events,
            written: Arc::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The orders this instance's batches wrote last (see [`Written`]).
    pub(crate) fn written(&self) -> &Written {
        &self.written
    }

    pub fn event_store(&self) -> &EventStoreClient {
        &self.events
    }

    /// Applies `envelope` (and any event missing before it) to the read model.
    #[tracing::instrument(skip_all, fields(order.id = %envelope.aggregate_id, event.type = %envelope.event_type, aggregate.version = envelope.aggregate_version))]
    pub async fn project(&self, envelope: EventEnvelope) -> Result<Outcome, ProjectionError> {
        let (order_id, delivered) = validate(envelope)?;
        // Events read from the event store to fill a gap, in version order.
        let mut fill: Vec<Decoded> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let step = db::retry(|| attempt(&self.pool, order_id, &delivered, &fill)).await?;
            match step {
                Step::Done(outcome) => {
                    if let Outcome::Applied { from, to } = outcome
                        && to - from > 1
                    {
                        tracing::info!(from, to, "filled a gap from the event store");
                    }
                    return Ok(outcome);
                }
                Step::Refused(reason) => return Err(ProjectionError::Refused(reason)),
                Step::Raced => {}
                Step::Gap { stored } => {
                    fill = self.missing(order_id, stored, delivered.version()).await?;
                }
            }
        }
        Err(ProjectionError::Transient(format!(
            "order {order_id} kept changing under this delivery; giving it back"
        )))
    }

    /// The events after `stored` and before `until`, from the event store.
    async fn missing(
        &self,
        order_id: Uuid,
        stored: i64,
        until: i64,
    ) -> Result<Vec<Decoded>, ProjectionError> {
        let events = self
            .events
            .events_from(&order_id.to_string(), stored + 1)
            .await?;
        let missing: Vec<Decoded> = events
            .into_iter()
            .filter(|e| e.aggregate_version < until)
            .map(Decoded::new)
            .collect::<Result<_, _>>()?;
        let contiguous = missing
            .iter()
            .zip(stored + 1..)
            .all(|(event, expected)| event.version() == expected);
        if !contiguous || i64::try_from(missing.len()).ok() != Some(until - stored - 1) {
            return Err(ProjectionError::Transient(format!(
                "the event store has no contiguous events {}..{} of order {order_id}",
                stored + 1,
                until
            )));
        }
        Ok(missing)
    }
}

/// One transaction: read the row (locked), apply what is due, write it back.
#[tracing::instrument(name = "ordersdb project", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.namespace = "ordersdb", db.collection.name = "orders"))]
async fn attempt(
    pool: &PgPool,
    order_id: Uuid,
    delivered: &Decoded,
    fill: &[Decoded],
) -> Result<Step, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let current = load(&mut tx, order_id).await?;
    let stored = current.as_ref().map_or(0, |order| order.version);
    if delivered.version() <= stored {
        tx.commit().await?;
        return Ok(Step::Done(Outcome::Duplicate { stored }));
    }
    // The events to apply: stored + 1 ..= delivered, from the gap fill and the delivery.
    let mut due: Vec<&Decoded> = fill
        .iter()
        .filter(|e| e.version() > stored && e.version() < delivered.version())
        .collect();
    due.push(delivered);
    let contiguous = due
        .iter()
        .zip(stored + 1..)
        .all(|(event, expected)| event.version() == expected);
    if !contiguous {
        return Ok(Step::Gap { stored });
    }

    // A new row is inserted with the `created` event (the fold refuses any other first event).
    let created = if current.is_none() {
        due.first().copied()
    } else {
        None
    };
    let mut order = current;
    for event in &due {
        if let Err(reason) = fold(&mut order, order_id, &event.event) {
            return Ok(Step::Refused(reason));
        }
    }
    let Some(order) = order else {
        return Ok(Step::Refused("no order to apply the event to".to_owned()));
    };
    let updated_at = delivered.envelope.created_at;
    let written = match created {
        Some(created) => insert(&mut tx, &order, created, delivered.version(), updated_at).await?,
        None => update(&mut tx, &order, stored, delivered.version(), updated_at).await?,
    };
    if !written {
        return Ok(Step::Raced);
    }
    tx.commit().await?;
    Ok(Step::Done(Outcome::Applied {
        from: stored,
        to: delivered.version(),
    }))
}

/// The order a stored row holds, without its items (no event changes them).
pub(crate) fn stored_order(row: OrderRow) -> Result<Order, sqlx::Error> {
    let OrderRow {
        order_id,
        customer_id,
        restaurant_id,
        status,
        amount,
        refunded,
        version,
        reason,
        payment_id,
        created_on,
        ..
    } = row;
    let corrupt = |what: String| sqlx::Error::Decode(what.into());
    Ok(Order {
        order_id,
        customer_id,
        restaurant_id,
        items: Vec::new(),
        amount: Money::from_decimal(amount)
            .map_err(|err| corrupt(format!("amount of order {order_id}: {err}")))?,
        status: OrderStatus::from_str(&status).map_err(|err| corrupt(err.to_string()))?,
        version,
        payment_id,
        refunded,
        created_on,
        reason,
    })
}

/// The stored order, locked until the transaction ends, without its items.
async fn load(
    tx: &mut Transaction<'static, Postgres>,
    order_id: Uuid,
) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(stored_order).transpose()
}

/// Inserts a new order and its items; false if another delivery inserted it first.
async fn insert(
    tx: &mut Transaction<'static, Postgres>,
    order: &Order,
    created: &Decoded,
    version: i64,
    updated_at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let OrderEvent::Created(event) = &created.event else {
        return Ok(false);
    };
    let trace_id = created.trace_id();
    let inserted = sqlx::query(
        "INSERT INTO orders (order_id, customer_id, restaurant_id, status, amount, refunded, version,
                             reason, trace_id, payment_id, created_on, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order.order_id)
    .bind(&order.customer_id)
    .bind(&order.restaurant_id)
    .bind(order.status.as_str())
    .bind(order.amount.as_decimal())
    .bind(order.refunded)
    .bind(version)
    .bind(&order.reason)
    .bind(trace_id)
    .bind(order.payment_id)
    .bind(order.created_on)
    .bind(updated_at)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() != 1 {
        return Ok(false);
    }
    for (line_no, item) in (1i64..).zip(&event.order_items) {
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, code, name, unit_price, quantity)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(order.order_id)
        .bind(line_no)
        .bind(&item.code)
        .bind(&item.name)
        .bind(item.unit_price.as_decimal())
        .bind(i64::from(item.quantity))
        .execute(&mut **tx)
        .await?;
    }
    Ok(true)
}

/// Moves the row from `stored` to `version`; false if it is no longer at `stored`.
async fn update(
    tx: &mut Transaction<'static, Postgres>,
    order: &Order,
    stored: i64,
    version: i64,
    updated_at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    // The version in the WHERE clause keeps this right even without the row lock.
    let updated = sqlx::query(
        "UPDATE orders
            SET status = $3, refunded = $4, reason = $5, payment_id = $6, version = $7,
                updated_at = $8
          WHERE order_id = $1 AND version = $2",
    )
    .bind(order.order_id)
    .bind(stored)
    .bind(order.status.as_str())
    .bind(order.refunded)
    .bind(&order.reason)
    .bind(order.payment_id)
    .bind(version)
    .bind(updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}
