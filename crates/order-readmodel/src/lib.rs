#![doc = include_str!("../README.md")]

use rust_decimal::Decimal;
use sqlx::migrate::Migrator;
use time::OffsetDateTime;
use uuid::Uuid;

/// `ordersdb`'s migrations, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Every column of `orders`, in the order of [`OrderRow`]'s fields, as a literal for `concat!`.
#[macro_export]
macro_rules! order_columns {
    () => {
        "order_id, customer_id, restaurant_id, status, amount, refunded, version, reason, \
         trace_id, payment_id, created_on, updated_at"
    };
}

/// [`order_columns!`] as a constant, for `format!`.
pub const ORDER_COLUMNS: &str = order_columns!();

/// A row of `ordersdb.orders`: one order as the read model holds it, without its items.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    pub restaurant_id: String,
    /// The status's name (`Pending`, `Paid`, …), as `order_domain::OrderStatus` spells it.
    pub status: String,
    pub amount: Decimal,
    /// Set by `paymentrefunded` on a Rejected or Cancelled order; the status stays final.
    pub refunded: bool,
    /// Aggregate version of the last event applied.
    pub version: i64,
    /// Why the order was rejected, cancelled or its payment failed.
    pub reason: Option<String>,
    /// The trace the order was created in.
    pub trace_id: Option<String>,
    /// The payment it was debited with.
    pub payment_id: Option<Uuid>,
    pub created_on: OffsetDateTime,
    /// The stored time of the last event applied.
    pub updated_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_are_embedded() {
        assert!(MIGRATOR.iter().count() >= 3);
    }
}
