//! The payments database: wallets and one payment row per order. Every function is one SQL
//! transaction run through [`db::retry`], so a serialization failure (SQLSTATE 40001) runs it again,
//! and the wallet change commits together with the row that makes it idempotent.

use std::collections::{BTreeMap, HashMap};

use order_domain::{Money, Order};
use pipeline_runtime::db;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// How many times a batch is decided again after another instance recorded one of its payments
/// between our read and our insert.
const MAX_ROUNDS: u32 = 5;

/// `payments.status` values.
pub mod status {
    pub const DEBITED: &str = "debited";
    pub const FAILED: &str = "failed";
    pub const REFUNDED: &str = "refunded";
    /// A decision the order never saw (the customer cancelled first): a debit's amount went back
    /// to the wallet; a failure moved no money.
    pub const VOIDED: &str = "voided";
}

/// What the database says about an order's payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The wallet was debited (now or by an earlier delivery).
    Debited,
    /// The balance did not cover the amount (now or earlier).
    Failed,
    /// An earlier debit was voided: the order moved on without it, there is nothing to append.
    Voided,
}

/// What a refund did to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refund {
    /// The amount went back to the wallet now.
    Credited,
    /// An earlier delivery already gave it back.
    AlreadyRefunded,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The database and the order disagree in a way no retry fixes.
    #[error("{0}")]
    Inconsistent(String),
}

/// One Pending order of a batch to pay: the order and the id its `paymentdebited` event gets.
#[derive(Debug, Clone)]
pub struct ToSettle {
    pub order: Order,
    pub debit_event_id: Uuid,
}

/// Decides the payments of a batch of Pending orders in one transaction, once each: the first
/// decision debits the wallet (created with `initial_credit` if missing) or records a failure;
/// later ones return the recorded decision. One decision per order, in order; orders of one
/// customer are paid in batch order from the same wallet; an order that appears twice gets the same
/// decision twice.
///
/// Guards (the transaction runs at READ COMMITTED, see [`db::begin_guarded`]):
/// - the wallets of the batch are created if missing and locked in `customer_id` order by one
///   upsert (`ON CONFLICT DO UPDATE`, which locks the latest committed row and returns its
///   balance), so their balances are read and written by one batch at a time and two batches
///   cannot deadlock;
/// - `payments.order_id` is the primary key and the insert is `ON CONFLICT DO NOTHING`: a payment
///   recorded before (a redelivery) or by another instance after our read makes the insert count
///   short, and the batch is rolled back and decided again with the recorded decisions read first
///   (they are then returned, not made twice).
///
/// The first round does not read recorded payments: a batch is almost always new, and its
/// transaction is then four round trips (begin, lock wallets, debit and record, commit). Only a
/// short insert count sends it the careful way.
// Debug level: a batch serves many orders, so it belongs to none of their traces (each
// message's CONSUMER span is in its order's trace).
#[tracing::instrument(name = "paymentsdb settle_batch", level = "debug", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.namespace = "paymentsdb", batch.size = batch.len()))]
pub async fn settle_batch(
    pool: &PgPool,
    batch: &[ToSettle],
    initial_credit: Money,
) -> Result<Vec<Result<Decision, LedgerError>>, LedgerError> {
    for round in 1..=MAX_ROUNDS {
        let read_recorded = round > 1;
        if let Some(decisions) =
            db::retry(|| try_settle_batch(pool, batch, initial_credit, read_recorded)).await?
        {
            return Ok(decisions);
        }
        tracing::debug!(
            round,
            "a payment of this batch is recorded already; deciding again"
        );
    }
    Err(LedgerError::Sql(sqlx::Error::Protocol(
        "payments of this batch kept being recorded by another instance".into(),
    )))
}

/// One attempt at [`settle_batch`]; `None` when a payment of the batch was recorded already (by
/// an earlier delivery when `read_recorded` is false, else by another instance meanwhile).
async fn try_settle_batch(
    pool: &PgPool,
    batch: &[ToSettle],
    initial_credit: Money,
    read_recorded: bool,
) -> Result<Option<Vec<Result<Decision, LedgerError>>>, sqlx::Error> {
    let mut tx = db::begin_guarded(pool).await?;
    let mut decided: HashMap<Uuid, Result<Decision, LedgerError>> = HashMap::new();
    if read_recorded {
        let ids: Vec<Uuid> = batch.iter().map(|s| s.order.order_id).collect();
        let recorded: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT order_id, status FROM payments WHERE order_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        for (order_id, recorded) in recorded {
            decided.insert(order_id, recorded_decision(order_id, &recorded));
        }
    }
    // The orders to decide now, each once, in batch order.
    let mut new: Vec<&ToSettle> = Vec::new();
    for settle in batch {
        if !decided.contains_key(&settle.order.order_id)
            && !new
                .iter()
                .any(|n| n.order.order_id == settle.order.order_id)
        {
            new.push(settle);
        }
    }
    if !new.is_empty() {
        let mut customers: Vec<&str> = new.iter().map(|s| s.order.customer_id.as_str()).collect();
        customers.sort_unstable();
        customers.dedup();
        let mut balances = lock_wallets(&mut tx, &customers, initial_credit).await?;
        let mut changed: BTreeMap<String, Decimal> = BTreeMap::new();
        let mut rows = PaymentRows::default();
        for settle in &new {
            let order = &settle.order;
            let balance = balances.get(&order.customer_id).copied();
            // A balance that is not Money (negative) covers nothing.
            let funds = balance.and_then(|b| Money::from_decimal(b).ok());
            let debited = funds.is_some_and(|funds| funds >= order.amount);
            if let (true, Some(balance)) = (debited, balance) {
                let after = balance - order.amount.as_decimal();
                balances.insert(order.customer_id.clone(), after);
                changed.insert(order.customer_id.clone(), after);
            }
            rows.push(settle, debited);
            decided.insert(
                order.order_id,
                Ok(if debited {
                    Decision::Debited
                } else {
                    Decision::Failed
                }),
            );
        }
        let inserted = rows.insert_debiting(&mut tx, changed).await?;
        if inserted < new.len() {
            tx.rollback().await?;
            return Ok(None);
        }
    }
    tx.commit().await?;
    Ok(Some(
        batch
            .iter()
            .map(|settle| match decided.get(&settle.order.order_id) {
                Some(Ok(decision)) => Ok(*decision),
                Some(Err(err)) => Err(LedgerError::Inconsistent(err.to_string())),
                None => Err(LedgerError::Inconsistent(format!(
                    "no decision for order {}",
                    settle.order.order_id
                ))),
            })
            .collect(),
    ))
}

/// Creates the missing wallets of `customers` (sorted, distinct) with `initial_credit`, locks
/// them all until the transaction ends, in `customer_id` order, and returns their balances, in one
/// statement. `ON CONFLICT DO UPDATE` (a no-op update) locks the latest committed version of an
/// existing wallet, even one committed after this statement's snapshot, and returns that version:
/// `DO NOTHING` followed by `SELECT … FOR UPDATE` would take two round trips for the same.
async fn lock_wallets(
    tx: &mut Transaction<'_, Postgres>,
    customers: &[&str],
    initial_credit: Money,
) -> Result<BTreeMap<String, Decimal>, sqlx::Error> {
    let balances = sqlx::query_as::<_, (String, Decimal)>(
        "INSERT INTO wallets (customer_id, balance, created_at, updated_at) \
         SELECT c, $2, now(), now() FROM UNNEST($1::TEXT[]) AS t(c) ORDER BY c \
         ON CONFLICT (customer_id) DO UPDATE SET balance = wallets.balance \
         RETURNING customer_id, balance",
    )
    .bind(customers)
    .bind(initial_credit.as_decimal())
    .fetch_all(&mut **tx)
    .await?;
    Ok(balances.into_iter().collect())
}

/// The decision a recorded payment status stands for.
fn recorded_decision(order_id: Uuid, recorded: &str) -> Result<Decision, LedgerError> {
    match recorded {
        status::DEBITED | status::REFUNDED => Ok(Decision::Debited),
        status::FAILED => Ok(Decision::Failed),
        status::VOIDED => Ok(Decision::Voided),
        other => Err(LedgerError::Inconsistent(format!(
            "payment of order {order_id} has unknown status {other:?}"
        ))),
    }
}

/// New `payments` rows, column by column, for one multi-row insert.
#[derive(Default)]
struct PaymentRows {
    order_ids: Vec<Uuid>,
    payment_ids: Vec<Uuid>,
    customers: Vec<String>,
    amounts: Vec<Decimal>,
    statuses: Vec<&'static str>,
    debit_event_ids: Vec<Option<Uuid>>,
}

impl PaymentRows {
    fn push(&mut self, settle: &ToSettle, debited: bool) {
        let order = &settle.order;
        self.order_ids.push(order.order_id);
        self.payment_ids
            .push(order_domain::payment_id(order.order_id));
        self.customers.push(order.customer_id.clone());
        self.amounts.push(order.amount.as_decimal());
        self.statuses.push(if debited {
            status::DEBITED
        } else {
            status::FAILED
        });
        self.debit_event_ids
            .push(debited.then_some(settle.debit_event_id));
    }

    /// Sets the `changed` wallets' balances and inserts the rows that are not there yet, in one
    /// statement; returns how many rows were new.
    async fn insert_debiting(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        changed: BTreeMap<String, Decimal>,
    ) -> Result<usize, sqlx::Error> {
        let (wallets, balances): (Vec<String>, Vec<Decimal>) = changed.into_iter().unzip();
        let inserted = sqlx::query(
            "WITH debit AS ( \
                 UPDATE wallets SET balance = w.balance, updated_at = now() \
                 FROM UNNEST($7::TEXT[], $8::DECIMAL[]) AS w(customer_id, balance) \
                 WHERE wallets.customer_id = w.customer_id) \
             INSERT INTO payments (order_id, payment_id, customer_id, amount, status, \
                                   debit_event_id, created_at, updated_at) \
             SELECT t.order_id, t.payment_id, t.customer_id, t.amount, t.status, t.debit_event_id, \
                    now(), now() \
             FROM UNNEST($1::UUID[], $2::UUID[], $3::TEXT[], $4::DECIMAL[], $5::TEXT[], $6::UUID[]) \
                  AS t(order_id, payment_id, customer_id, amount, status, debit_event_id) \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(&self.order_ids)
        .bind(&self.payment_ids)
        .bind(&self.customers)
        .bind(&self.amounts)
        .bind(&self.statuses)
        .bind(&self.debit_event_ids)
        .bind(&wallets)
        .bind(&balances)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(usize::try_from(inserted).unwrap_or(usize::MAX))
    }
}

/// Gives back the debit of an order the event store saw debited, once: `debited` → `refunded`.
#[tracing::instrument(name = "paymentsdb refund", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.namespace = "paymentsdb", order.id = %order_id))]
pub async fn refund(
    pool: &PgPool,
    order_id: Uuid,
    refund_event_id: Uuid,
) -> Result<Refund, LedgerError> {
    db::retry(|| async move {
        // READ COMMITTED: the payment row, locked first, serializes every change of this order's
        // payment and its amount's way back to the wallet.
        let mut tx = db::begin_guarded(pool).await?;
        let row = locked_payment(&mut tx, order_id).await?;
        let outcome = match row {
            Some((recorded, customer_id, amount)) if recorded == status::DEBITED => {
                sqlx::query(
                    "UPDATE payments SET status = $2, refund_event_id = $3, updated_at = now() \
                     WHERE order_id = $1",
                )
                .bind(order_id)
                .bind(status::REFUNDED)
                .bind(refund_event_id)
                .execute(&mut *tx)
                .await?;
                credit(&mut tx, &customer_id, amount).await?;
                Ok(Refund::Credited)
            }
            Some((recorded, _, _)) if recorded == status::REFUNDED => Ok(Refund::AlreadyRefunded),
            Some((recorded, _, _)) => Err(LedgerError::Inconsistent(format!(
                "order {order_id} was debited but its payment is {recorded:?} here"
            ))),
            None => Err(LedgerError::Inconsistent(format!(
                "order {order_id} was debited but no payment is recorded here"
            ))),
        };
        tx.commit().await?;
        Ok(outcome)
    })
    .await?
}

/// What [`void`] undid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voided {
    /// A debit: its amount went back to the wallet.
    Debit,
    /// A failed payment: no money had moved, only the row says now that the order never saw it.
    Failure,
    /// Nothing to undo (no row, already voided, or a decision the order saw).
    Nothing,
}

/// Undoes a decision the order never saw (it was cancelled before the payment event could be
/// appended): `debited` → `voided` with the amount back to the wallet, and, when `failure_too`
/// (the caller knows the order holds no payment failure either), `failed` → `voided`.
#[tracing::instrument(name = "paymentsdb void", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.namespace = "paymentsdb", order.id = %order_id))]
pub async fn void(pool: &PgPool, order_id: Uuid, failure_too: bool) -> Result<Voided, LedgerError> {
    let voided = db::retry(|| async move {
        // READ COMMITTED: the payment row, locked first, serializes every change of this order's
        // payment and its amount's way back to the wallet.
        let mut tx = db::begin_guarded(pool).await?;
        let row = locked_payment(&mut tx, order_id).await?;
        let voided = match row {
            Some((recorded, customer_id, amount)) if recorded == status::DEBITED => {
                mark_voided(&mut tx, order_id).await?;
                credit(&mut tx, &customer_id, amount).await?;
                Voided::Debit
            }
            Some((recorded, _, _)) if failure_too && recorded == status::FAILED => {
                mark_voided(&mut tx, order_id).await?;
                Voided::Failure
            }
            _ => Voided::Nothing,
        };
        tx.commit().await?;
        Ok(voided)
    })
    .await?;
    Ok(voided)
}

async fn mark_voided(tx: &mut Transaction<'_, Postgres>, order_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET status = $2, updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(status::VOIDED)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The order's payment (status, customer, amount), locked until the transaction ends.
async fn locked_payment(
    tx: &mut Transaction<'_, Postgres>,
    order_id: Uuid,
) -> Result<Option<(String, String, Decimal)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, customer_id, amount FROM payments WHERE order_id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut **tx)
    .await
}

async fn credit(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: &str,
    amount: Decimal,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE wallets SET balance = balance + $2, updated_at = now() WHERE customer_id = $1",
    )
    .bind(customer_id)
    .bind(amount)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
