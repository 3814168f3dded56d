//! The read model's open orders, oldest in their status first: the candidates of each sweep, and
//! what `orderctl deadlines` lists.
//!
//! A step's query reads only orders in the status that awaits it and whose deadline has fallen by
//! a cutoff. The partial index `orders_open` (ordersdb migration 0003) holds the open orders alone,
//! by status and `updated_at`, so a scan costs what the overdue open orders cost, never what every
//! order ever placed costs. The status is written into each query (not bound) so that the planner can
//! prove the index's predicate for any plan, generic ones included.
//!
//! `updated_at` is the stored time of the last event the read model applied: for an open order, the
//! event that opened its status (`created` or `paymentdebited`).

use order_domain::{Deadlines, Due, OrderStatus, Step};
use order_readmodel::{OrderRow, order_columns};
use pipeline_runtime::db;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// An open order as the read model has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    /// The version the read model has applied; the event store may be further.
    pub version: i64,
    /// When the order entered its status.
    pub since: OffsetDateTime,
}

/// Where a page of a step's scan ends: the next page starts after it.
pub type Cursor = (OffsetDateTime, Uuid);

/// Before every order (no order's status is older than 1970).
const START: Cursor = (OffsetDateTime::UNIX_EPOCH, Uuid::nil());

/// The query of a step's page: `$1` cutoff, `$2`/`$3` the cursor, `$4` the page size.
pub fn query(step: Step) -> &'static str {
    match step {
        Step::Payment => concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders \
             WHERE status = 'Pending' AND updated_at <= $1 AND (updated_at, order_id) > ($2, $3) \
             ORDER BY updated_at, order_id LIMIT $4"
        ),
        Step::Review => concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders \
             WHERE status = 'Paid' AND updated_at <= $1 AND (updated_at, order_id) > ($2, $3) \
             ORDER BY updated_at, order_id LIMIT $4"
        ),
    }
}

/// Up to `limit` orders waiting for `step` since `cutoff` or earlier, after `after` (a previous
/// page's last order), oldest first.
pub async fn page(
    pool: &PgPool,
    step: Step,
    cutoff: OffsetDateTime,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<OpenOrder>, sqlx::Error> {
    let (after_since, after_id) = after.unwrap_or(START);
    let rows: Vec<OrderRow> = db::retry(|| {
        sqlx::query_as(query(step))
            .bind(cutoff)
            .bind(after_since)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
    })
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| OpenOrder {
            order_id: row.order_id,
            customer_id: row.customer_id,
            status: step.status(),
            version: row.version,
            since: row.updated_at,
        })
        .collect())
}

/// The cursor after `order`.
pub fn cursor(order: &OpenOrder) -> Cursor {
    (order.since, order.order_id)
}

/// The orders whose deadline falls at `by` or earlier (the overdue ones included), soonest
/// deadline first, at most `limit`: what `orderctl deadlines --within` lists.
pub async fn due_by(
    pool: &PgPool,
    deadlines: &Deadlines,
    by: OffsetDateTime,
    limit: i64,
) -> Result<Vec<(OpenOrder, Due)>, sqlx::Error> {
    let mut due = Vec::new();
    for step in Step::ALL {
        let cutoff = before(by, deadlines.of(step));
        for order in page(pool, step, cutoff, None, limit).await? {
            if let Some(deadline) = deadlines.due(order.status, order.since) {
                due.push((order, deadline));
            }
        }
    }
    due.sort_by_key(|(order, deadline)| (deadline.at, order.order_id));
    due.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(due)
}

/// `at - deadline`: orders in their status since then or earlier are due by `at`. Saturates.
pub fn before(at: OffsetDateTime, deadline: std::time::Duration) -> OffsetDateTime {
    let deadline = time::Duration::try_from(deadline).unwrap_or(time::Duration::MAX);
    at.saturating_sub(deadline)
}
