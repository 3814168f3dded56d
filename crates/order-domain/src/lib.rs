#![doc = include_str!("../README.md")]

mod deadline;
mod decide;
mod events;
mod ids;
mod money;
mod order;
mod request;

#[cfg(test)]
mod tests;

pub use deadline::{
    DeadlineDecision, Deadlines, Due, Step, deadline_reason, deadline_step, format_duration,
    parse_duration,
};
pub use decide::{INSUFFICIENT_FUNDS, Refusal, review_debit};
pub use events::{
    AGGREGATE_TYPE, Approved, Cancelled, DecodeError, OrderCreated, OrderEvent, OrderItem,
    PaymentDebited, PaymentFailed, PaymentRefunded, Rejected, event_type,
};
pub use ids::{caused_event_id, deadline_event_id, payment_id};
pub use money::{Money, MoneyError};
pub use order::{FoldError, Order, OrderStatus, UnknownStatus};
pub use request::{FieldError, InvalidOrder, NewOrder, OrderRequest, limits};
