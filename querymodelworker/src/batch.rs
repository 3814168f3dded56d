//! Projecting a batch of deliveries in one ordersdb transaction.
//!
//! The batch does what [`Projector::project`] does one event at a time, with a handful of
//! statements for the whole batch: it locks the batch's rows, folds each order's due events in
//! memory with the domain, and writes every new row with its items and every changed row with one
//! statement each. What the fold cannot settle alone (a gap before a delivered event, an event the
//! state machine refuses) and rows another instance changed first leave the batch and take the
//! per-message path after the commit, which fills gaps from the event store and refuses.
//!
//! Rows are read only when the batch cannot know them: a new order has none, and an order this
//! instance wrote last is folded onto what it wrote ([`Written`]). A batch that reads nothing and
//! writes with one statement is that one statement, its own transaction: one round trip.
//!
//! No SERIALIZABLE is needed on PostgreSQL; each race is caught by its own guard:
//! - `SELECT … FOR UPDATE` locks every existing row the batch reads until the commit, so no other
//!   writer changes an order between our read and our write. The rows are locked in `order_id`
//!   order (and new rows inserted in that order), so two batches that read cannot deadlock. Two
//!   that did not (copies of the same events at two instances at once) may: PostgreSQL then fails
//!   one, and its events take the per-message path.
//! - `ON CONFLICT (order_id) DO NOTHING` on the insert: a row that did not exist when we read (so
//!   nothing was locked), or that we did not read (a new order's `created` delivered again), is
//!   left alone; that order is projected again, per message, after the commit. Its items are
//!   inserted only with its row.
//! - `orders.version = t.stored` in the update: a row we did not see at that version is not
//!   written. For a row we read and locked it is redundant on PostgreSQL (the guard on an engine
//!   that does not lock); for a row folded from what this instance wrote last it is the guard: a
//!   row another instance moved on is never moved back.
//!
//! At SERIALIZABLE (CockroachDB, the tests) the same races may instead abort the transaction with
//! a serialization failure; [`db::retry`] runs it again from the start.

use std::collections::{BTreeMap, HashMap, HashSet};

use order_domain::Order;
use order_readmodel::{OrderRow, order_columns};
use pipeline_runtime::db;
use pipeline_runtime::stream::EventEnvelope;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::projection::{
    BatchDatabaseError, Decoded, Outcome, ProjectionError, Projector, fold, stored_order, validate,
};

/// A valid event of the batch and its place in it.
struct Event {
    index: usize,
    decoded: Decoded,
}

/// What the transaction settled.
#[derive(Default)]
struct Settled {
    /// Outcomes by place in the batch.
    outcomes: Vec<(usize, Outcome)>,
    /// Places of the events left for the per-message path.
    later: HashSet<usize>,
}

/// What the batch does with one order's events.
struct Plan<'a> {
    /// Outcomes that stand whatever the writes do: versions at or below the stored one.
    settled: Vec<(usize, Outcome)>,
    /// Events from a gap or a refusal on, for the per-message path.
    later: Vec<usize>,
    /// The row to write, when the batch applies at least one event of the order.
    write: Option<Write<'a>>,
}

/// A row to insert (`stored` 0) or to move from `stored` to `version`.
struct Write<'a> {
    order: Order,
    /// The `created` event of a new row: its items and trace id.
    created: Option<&'a Decoded>,
    stored: i64,
    version: i64,
    /// Commit time of the last event applied.
    updated_at: OffsetDateTime,
    /// Outcomes of the events the write applies (and of copies of them): they stand only if the row
    /// is written; otherwise the events take the per-message path.
    outcomes: Vec<(usize, Outcome)>,
}

impl Projector {
    /// Projects `envelopes` with the same effect as [`Projector::project`] on each of them in turn
    /// (each order's events in version order), in one transaction on the happy path. One result per
    /// envelope, in the order given.
    ///
    /// An event that cannot be settled in the batch (a gap before it, refused by the state machine,
    /// its row changed by another instance) is projected with [`Projector::project`] after the
    /// commit. When the database is unavailable, every event of the transaction gets
    /// [`ProjectionError::BatchDatabase`].
    pub async fn project_batch(
        &self,
        envelopes: Vec<EventEnvelope>,
    ) -> Vec<Result<Outcome, ProjectionError>> {
        let mut results: Vec<Option<Result<Outcome, ProjectionError>>> = Vec::new();
        results.resize_with(envelopes.len(), || None);
        let mut orders: BTreeMap<Uuid, Vec<Event>> = BTreeMap::new();
        for (index, envelope) in envelopes.into_iter().enumerate() {
            match validate(envelope) {
                Ok((order_id, decoded)) => {
                    orders
                        .entry(order_id)
                        .or_default()
                        .push(Event { index, decoded });
                }
                Err(refused) => results[index] = Some(Err(refused)),
            }
        }
        // Stable: of several copies of one version, the first delivered is the one applied.
        for events in orders.values_mut() {
            events.sort_by_key(|event| event.decoded.version());
        }

        let size = orders.values().map(Vec::len).sum::<usize>();
        let later = if size == 0 {
            HashSet::new()
        } else {
            match db::retry(|| transaction(self.pool(), self.written(), &orders, size)).await {
                Ok(settled) => {
                    for (index, outcome) in settled.outcomes {
                        results[index] = Some(Ok(outcome));
                    }
                    settled.later
                }
                Err(err) if db::is_unavailable(&err) => {
                    let shared = BatchDatabaseError::new(err);
                    for event in orders.values().flatten() {
                        results[event.index] = Some(Err(shared.clone().into()));
                    }
                    HashSet::new()
                }
                Err(err) => {
                    // Not an outage: most likely one event's data or one row the database refuses.
                    // One event at a time keeps it from holding back the rest of the batch.
                    tracing::warn!(error = %err, size, "batch transaction failed; projecting its events one by one");
                    orders.values().flatten().map(|event| event.index).collect()
                }
            }
        };

        // In version order per order, as a delivery of each would.
        for event in orders.into_values().flatten() {
            if later.contains(&event.index) {
                results[event.index] = Some(self.project(event.decoded.envelope).await);
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(ProjectionError::Transient(
                        "the batch left this event without an outcome".to_owned(),
                    ))
                })
            })
            .collect()
    }
}

/// One transaction for the whole batch: lock, fold in memory, write with one statement per table.
///
/// Rows the batch can fold onto without reading them are not read: a new order's (its first event
/// is `created`), and one this instance wrote last at the version just before the batch's first
/// event of it ([`Written`]). When no row has to be read and one statement writes the batch, that
/// statement is the transaction (one round trip); otherwise the reads and writes share one.
// Debug level: a batch serves many orders, so it belongs to none of their traces (each
// message's CONSUMER span is in its order's trace).
#[tracing::instrument(name = "ordersdb project_batch", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.namespace = "ordersdb", db.collection.name = "orders", batch.size = size))]
async fn transaction(
    pool: &PgPool,
    written: &Written,
    orders: &BTreeMap<Uuid, Vec<Event>>,
    size: usize,
) -> Result<Settled, sqlx::Error> {
    let mut known: HashMap<Uuid, Option<Order>> = HashMap::new();
    let mut unknown: Vec<Uuid> = Vec::new();
    for (&order_id, events) in orders {
        let first = events.first().map_or(1, |event| event.decoded.version());
        if first == 1 {
            known.insert(order_id, None);
        } else if let Some(order) = written.at(order_id, first - 1) {
            known.insert(order_id, Some(order));
        } else {
            unknown.push(order_id);
        }
    }
    // READ COMMITTED (see the guards above): no serialization failures between batches that only
    // share index pages.
    let mut tx = None;
    let mut stored = HashMap::new();
    if !unknown.is_empty() {
        let mut opened = db::begin_guarded(pool).await?;
        stored = load_all(&mut opened, &unknown).await?;
        tx = Some(opened);
    }

    let mut settled = Settled::default();
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    for (&order_id, events) in orders {
        let current = match known.remove(&order_id) {
            Some(known) => known,
            None => stored.remove(&order_id),
        };
        let plan = plan(order_id, current, events);
        settled.outcomes.extend(plan.settled);
        settled.later.extend(plan.later);
        match plan.write {
            Some(write) if write.created.is_some() => inserts.push(write),
            Some(write) => updates.push(write),
            None => {}
        }
    }
    // Two statements are one transaction, so that the batch is written whole or not at all.
    if tx.is_none() && !inserts.is_empty() && !updates.is_empty() {
        tx = Some(db::begin_guarded(pool).await?);
    }
    let (inserted, updated) = match tx {
        Some(mut tx) => {
            let inserted = insert_all(&mut *tx, &inserts).await?;
            let updated = update_all(&mut *tx, &updates).await?;
            tx.commit().await?;
            (inserted, updated)
        }
        None => (
            insert_all(pool, &inserts).await?,
            update_all(pool, &updates).await?,
        ),
    };

    let mut remembered = Vec::new();
    let mut forgotten: Vec<Uuid> = orders
        .iter()
        .filter(|(_, events)| {
            events
                .iter()
                .any(|event| settled.later.contains(&event.index))
        })
        .map(|(order_id, _)| *order_id)
        .collect();
    for (writes, written) in [(inserts, inserted), (updates, updated)] {
        for write in writes {
            if written.contains(&write.order.order_id) {
                settled.outcomes.extend(write.outcomes);
                let mut order = write.order;
                order.version = write.version;
                remembered.push(order);
            } else {
                tracing::debug!(order.id = %write.order.order_id, "row changed by another instance; projecting its events one by one");
                forgotten.push(write.order.order_id);
                settled
                    .later
                    .extend(write.outcomes.into_iter().map(|(index, _)| index));
            }
        }
    }
    written.forget(&forgotten);
    written.remember(remembered);
    Ok(settled)
}

/// The orders this instance wrote last, by id, at the version it wrote: a batch folds an order's
/// next events onto it without reading (and locking) the row. A row that moved on meanwhile
/// (another instance, a rebuild) is not at that version, so the update's version guard leaves it
/// alone and its events take the per-message path. Bounded: cleared when full (a forgotten order
/// costs one read).
#[derive(Default)]
pub(crate) struct Written {
    orders: std::sync::Mutex<HashMap<Uuid, Order>>,
}

/// Orders [`Written`] remembers at most.
const WRITTEN_CAPACITY: usize = 100_000;

impl Written {
    /// The order as this instance wrote it, if it wrote it last at `version`.
    fn at(&self, order_id: Uuid, version: i64) -> Option<Order> {
        self.lock()
            .get(&order_id)
            .filter(|order| order.version == version)
            .cloned()
    }

    fn remember(&self, orders: Vec<Order>) {
        let mut remembered = self.lock();
        if remembered.len() + orders.len() > WRITTEN_CAPACITY {
            remembered.clear();
        }
        for order in orders {
            remembered.insert(order.order_id, order);
        }
    }

    fn forget(&self, order_ids: &[Uuid]) {
        let mut remembered = self.lock();
        for order_id in order_ids {
            remembered.remove(order_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Order>> {
        // Held only for a map operation: a panic cannot leave an order half-written.
        self.orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The batch's stored orders, locked until the transaction ends, in `order_id` order.
async fn load_all(
    tx: &mut Transaction<'static, Postgres>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Order>, sqlx::Error> {
    let rows: Vec<OrderRow> = sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|row| Ok((row.order_id, stored_order(row)?)))
        .collect()
}

/// Folds an order's events (in version order) onto its stored state, as `attempt` does for one:
/// versions at or below the stored one are duplicates, the contiguous run after it is applied, and
/// the events from a gap or a refused one on are left for the per-message path.
fn plan(order_id: Uuid, current: Option<Order>, events: &[Event]) -> Plan<'_> {
    let stored = current.as_ref().map_or(0, |order| order.version);
    let mut order = current;
    let mut at = stored;
    let mut settled = Vec::new();
    let mut outcomes = Vec::new();
    let mut later = Vec::new();
    let mut created = None;
    let mut updated_at = None;
    for (position, event) in events.iter().enumerate() {
        let version = event.decoded.version();
        if version <= stored {
            settled.push((event.index, Outcome::Duplicate { stored }));
            continue;
        }
        if version <= at {
            // A copy of an event applied just before in this batch.
            outcomes.push((event.index, Outcome::Duplicate { stored: at }));
            continue;
        }
        if version != at + 1 || fold(&mut order, order_id, &event.decoded.event).is_err() {
            later.extend(events[position..].iter().map(|event| event.index));
            break;
        }
        if at == 0 {
            created = Some(&event.decoded);
        }
        outcomes.push((
            event.index,
            Outcome::Applied {
                from: at,
                to: version,
            },
        ));
        at = version;
        updated_at = Some(event.decoded.envelope.created_at);
    }
    let write = match (order, updated_at) {
        (Some(order), Some(updated_at)) => Some(Write {
            order,
            created,
            stored,
            version: at,
            updated_at,
            outcomes,
        }),
        _ => None,
    };
    Plan {
        settled,
        later,
        write,
    }
}

/// Inserts the new rows and the items of those that were inserted, in one statement; the ids
/// inserted.
async fn insert_all<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    writes: &[Write<'_>],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if writes.is_empty() {
        return Ok(HashSet::new());
    }
    let n = writes.len();
    let mut ids = Vec::with_capacity(n);
    let mut customers = Vec::with_capacity(n);
    let mut restaurants = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut amounts = Vec::with_capacity(n);
    let mut refunded = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut trace_ids = Vec::with_capacity(n);
    let mut payment_ids = Vec::with_capacity(n);
    let mut created_ons = Vec::with_capacity(n);
    let mut updated_ats = Vec::with_capacity(n);
    // In `order_id` order (the batch's map is sorted): concurrent inserts of the same new ids wait
    // for each other in one order, never in a cycle.
    for write in writes {
        let order = &write.order;
        ids.push(order.order_id);
        customers.push(order.customer_id.as_str());
        restaurants.push(order.restaurant_id.as_str());
        statuses.push(order.status.as_str());
        amounts.push(order.amount.as_decimal());
        refunded.push(order.refunded);
        versions.push(write.version);
        reasons.push(order.reason.as_deref());
        trace_ids.push(write.created.and_then(Decoded::trace_id));
        payment_ids.push(order.payment_id);
        created_ons.push(order.created_on);
        updated_ats.push(write.updated_at);
    }
    let mut item_orders = Vec::new();
    let mut line_nos = Vec::new();
    let mut codes = Vec::new();
    let mut names = Vec::new();
    let mut unit_prices = Vec::new();
    let mut quantities = Vec::new();
    // Every new row's items; the statement keeps those of the rows it inserted.
    for write in writes {
        for (line_no, item) in (1i64..).zip(&write.order.items) {
            item_orders.push(write.order.order_id);
            line_nos.push(line_no);
            codes.push(item.code.as_str());
            names.push(item.name.as_str());
            unit_prices.push(item.unit_price.as_decimal());
            quantities.push(i64::from(item.quantity));
        }
    }
    let inserted: Vec<(Uuid,)> = sqlx::query_as(
        "WITH inserted AS (
             INSERT INTO orders (order_id, customer_id, restaurant_id, status, amount, refunded,
                                 version, reason, trace_id, payment_id, created_on, updated_at)
             SELECT * FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::DECIMAL[],
                                  $6::BOOL[], $7::INT8[], $8::TEXT[], $9::TEXT[], $10::UUID[],
                                  $11::TIMESTAMPTZ[], $12::TIMESTAMPTZ[])
             ON CONFLICT (order_id) DO NOTHING
             RETURNING order_id),
         items AS (
             INSERT INTO order_items (order_id, line_no, code, name, unit_price, quantity)
             SELECT * FROM UNNEST($13::UUID[], $14::INT8[], $15::TEXT[], $16::TEXT[],
                                  $17::DECIMAL[], $18::INT8[])
                  AS i(order_id, line_no, code, name, unit_price, quantity)
             WHERE i.order_id IN (SELECT order_id FROM inserted))
         SELECT order_id FROM inserted",
    )
    .bind(&ids)
    .bind(&customers)
    .bind(&restaurants)
    .bind(&statuses)
    .bind(&amounts)
    .bind(&refunded)
    .bind(&versions)
    .bind(&reasons)
    .bind(&trace_ids)
    .bind(&payment_ids)
    .bind(&created_ons)
    .bind(&updated_ats)
    .bind(&item_orders)
    .bind(&line_nos)
    .bind(&codes)
    .bind(&names)
    .bind(&unit_prices)
    .bind(&quantities)
    .fetch_all(executor)
    .await?;
    Ok(inserted.into_iter().map(|(id,)| id).collect())
}

/// Moves each row from its stored version to its new one; the ids updated.
async fn update_all<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    writes: &[Write<'_>],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if writes.is_empty() {
        return Ok(HashSet::new());
    }
    let n = writes.len();
    let mut ids = Vec::with_capacity(n);
    let mut stored = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut refunded = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut payment_ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut updated_ats = Vec::with_capacity(n);
    for write in writes {
        let order = &write.order;
        ids.push(order.order_id);
        stored.push(write.stored);
        statuses.push(order.status.as_str());
        refunded.push(order.refunded);
        reasons.push(order.reason.as_deref());
        payment_ids.push(order.payment_id);
        versions.push(write.version);
        updated_ats.push(write.updated_at);
    }
    let updated: Vec<(Uuid,)> = sqlx::query_as(
        "UPDATE orders
            SET status = t.status, refunded = t.refunded, reason = t.reason,
                payment_id = t.payment_id, version = t.version, updated_at = t.updated_at
           FROM UNNEST($1::UUID[], $2::INT8[], $3::TEXT[], $4::BOOL[], $5::TEXT[], $6::UUID[],
                       $7::INT8[], $8::TIMESTAMPTZ[])
                AS t(id, stored, status, refunded, reason, payment_id, version, updated_at)
          WHERE orders.order_id = t.id AND orders.version = t.stored
         RETURNING orders.order_id",
    )
    .bind(&ids)
    .bind(&stored)
    .bind(&statuses)
    .bind(&refunded)
    .bind(&reasons)
    .bind(&payment_ids)
    .bind(&versions)
    .bind(&updated_ats)
    .fetch_all(executor)
    .await?;
    Ok(updated.into_iter().map(|(id,)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_database_error_of_an_unreachable_database_is_an_outage() {
        let err = ProjectionError::from(BatchDatabaseError::new(sqlx::Error::PoolTimedOut));
        let err = anyhow::Error::from(err);
        assert!(pipeline_runtime::consumer::is_outage(&err), "{err:#}");
        assert_eq!(
            format!("{err:#}"),
            format!(
                "read model database (batch transaction): {}",
                sqlx::Error::PoolTimedOut
            )
        );
    }
}
