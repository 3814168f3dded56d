//! The payments database: wallets and one payment row per order. Every function is one SQL
//! transaction run through [`db::retry`], so a serialization failure (SQLSTATE 40001) runs it again,
//! and the wallet change commits together with the row that makes it idempotent.

use order_domain::{Money, Order};
use pipeline_runtime::db;
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

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

/// Decides the payment of a Pending order, once: the first call debits the wallet (creating it with
/// `initial_credit` if missing) or records a failure; later calls return the recorded decision.
#[tracing::instrument(name = "paymentsdb settle", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.namespace = "paymentsdb", order.id = %order.order_id))]
pub async fn settle(
    pool: &PgPool,
    order: &Order,
    initial_credit: Money,
    debit_event_id: Uuid,
) -> Result<Decision, LedgerError> {
    db::retry(|| async move {
        let mut tx = pool.begin().await?;
        if let Some(recorded) = recorded_status(&mut tx, order.order_id).await? {
            tx.rollback().await?;
            return Ok(match recorded.as_str() {
                status::DEBITED | status::REFUNDED => Ok(Decision::Debited),
                status::FAILED => Ok(Decision::Failed),
                status::VOIDED => Ok(Decision::Voided),
                other => Err(LedgerError::Inconsistent(format!(
                    "payment of order {} has unknown status {other:?}",
                    order.order_id
                ))),
            });
        }
        sqlx::query(
            "INSERT INTO wallets (customer_id, balance, created_at, updated_at) \
             VALUES ($1, $2, now(), now()) ON CONFLICT (customer_id) DO NOTHING",
        )
        .bind(&order.customer_id)
        .bind(initial_credit.as_decimal())
        .execute(&mut *tx)
        .await?;
        let (balance,): (Decimal,) =
            sqlx::query_as("SELECT balance FROM wallets WHERE customer_id = $1 FOR UPDATE")
                .bind(&order.customer_id)
                .fetch_one(&mut *tx)
                .await?;
        // A balance that is not Money (negative) covers nothing.
        let funds = Money::from_decimal(balance).ok();
        let debited = funds.is_some_and(|funds| funds >= order.amount);
        if debited {
            sqlx::query(
                "UPDATE wallets SET balance = balance - $2, updated_at = now() \
                 WHERE customer_id = $1",
            )
            .bind(&order.customer_id)
            .bind(order.amount.as_decimal())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO payments (order_id, payment_id, customer_id, amount, status, \
             debit_event_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, now(), now())",
        )
        .bind(order.order_id)
        .bind(order_domain::payment_id(order.order_id))
        .bind(&order.customer_id)
        .bind(order.amount.as_decimal())
        .bind(if debited {
            status::DEBITED
        } else {
            status::FAILED
        })
        .bind(debited.then_some(debit_event_id))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(if debited {
            Decision::Debited
        } else {
            Decision::Failed
        }))
    })
    .await?
}

/// Gives back the debit of an order the event store saw debited, once: `debited` → `refunded`.
#[tracing::instrument(name = "paymentsdb refund", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.namespace = "paymentsdb", order.id = %order_id))]
pub async fn refund(
    pool: &PgPool,
    order_id: Uuid,
    refund_event_id: Uuid,
) -> Result<Refund, LedgerError> {
    db::retry(|| async move {
        let mut tx = pool.begin().await?;
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
        let mut tx = pool.begin().await?;
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

async fn recorded_status(
    tx: &mut Transaction<'_, Postgres>,
    order_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as("SELECT status FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|(status,)| status))
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
