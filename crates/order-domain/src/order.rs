//! The order aggregate, rebuilt by folding its events.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::{OrderCreated, OrderEvent, OrderItem};
use crate::money::Money;

/// Where an order is in its life. The names are those of DESIGN.md and of the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    Pending,
    Paid,
    Approved,
    PaymentFailed,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::Approved,
        OrderStatus::PaymentFailed,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "Pending",
            OrderStatus::Paid => "Paid",
            OrderStatus::Approved => "Approved",
            OrderStatus::PaymentFailed => "PaymentFailed",
            OrderStatus::Rejected => "Rejected",
            OrderStatus::Cancelled => "Cancelled",
        }
    }

    /// No status change follows a final status (a refund only sets `refunded`).
    pub fn is_final(self) -> bool {
        !matches!(self, OrderStatus::Pending | OrderStatus::Paid)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<OrderStatus, UnknownStatus> {
        OrderStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// An order as its events made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: Uuid,
    pub customer_id: String,
    pub restaurant_id: String,
    pub items: Vec<OrderItem>,
    pub amount: Money,
    pub status: OrderStatus,
    /// Number of events applied: the version to expect when appending the next one.
    pub version: i64,
    /// Set by the debit; kept after a refund so the refund can name it.
    pub payment_id: Option<Uuid>,
    pub refunded: bool,
    #[serde(with = "crate::events::rfc3339")]
    pub created_on: OffsetDateTime,
    /// Why the order failed, was rejected or was cancelled.
    pub reason: Option<String>,
}

/// An event sequence that no order can have had. Never a panic: a corrupt or foreign stream
/// is reported, and the caller decides (workers dead-letter it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("the first event of an order must be `created`, not `{event_type}`")]
    NotCreatedFirst { event_type: &'static str },
    #[error("order {order_id} was already created")]
    AlreadyCreated { order_id: Uuid },
    #[error("event `{event_type}` of order {event_order_id} cannot be applied to order {order_id}")]
    WrongOrder {
        event_type: &'static str,
        order_id: Uuid,
        event_order_id: Uuid,
    },
    #[error("event `{event_type}` cannot follow status {status}")]
    IllegalTransition {
        event_type: &'static str,
        status: OrderStatus,
    },
    #[error("order {order_id} was refunded without having been debited")]
    RefundWithoutDebit { order_id: Uuid },
    #[error("order {order_id} was refunded twice")]
    RefundedTwice { order_id: Uuid },
    #[error("refund of order {order_id} names payment {refunded} but the debit was {debited}")]
    PaymentMismatch {
        order_id: Uuid,
        debited: Uuid,
        refunded: Uuid,
    },
}

impl Order {
    /// The order a `created` event starts (version 1).
    pub fn from_created(created: &OrderCreated) -> Order {
        Order {
            order_id: created.order_id,
            customer_id: created.customer_id.clone(),
            restaurant_id: created.restaurant_id.clone(),
            items: created.order_items.clone(),
            amount: created.amount,
            status: OrderStatus::Pending,
            version: 1,
            payment_id: None,
            refunded: false,
            created_on: created.created_on,
            reason: None,
        }
    }

    /// Rebuilds an order from its events, oldest first. `None` when there are none.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a OrderEvent>,
    ) -> Result<Option<Order>, FoldError> {
        let mut events = events.into_iter();
        let mut order = match events.next() {
            None => return Ok(None),
            Some(OrderEvent::Created(created)) => Order::from_created(created),
            Some(other) => {
                return Err(FoldError::NotCreatedFirst {
                    event_type: other.event_type(),
                });
            }
        };
        for event in events {
            order.apply(event)?;
        }
        Ok(Some(order))
    }

    /// Applies the next event, or says why it cannot follow. On error the order is unchanged.
    pub fn apply(&mut self, event: &OrderEvent) -> Result<(), FoldError> {
        let event_type = event.event_type();
        if let OrderEvent::Created(_) = event {
            return Err(FoldError::AlreadyCreated {
                order_id: self.order_id,
            });
        }
        if event.order_id() != self.order_id {
            return Err(FoldError::WrongOrder {
                event_type,
                order_id: self.order_id,
                event_order_id: event.order_id(),
            });
        }
        let illegal = FoldError::IllegalTransition {
            event_type,
            status: self.status,
        };
        match (self.status, event) {
            (OrderStatus::Pending, OrderEvent::PaymentDebited(e)) => {
                self.status = OrderStatus::Paid;
                self.payment_id = Some(e.payment_id);
            }
            (OrderStatus::Pending, OrderEvent::PaymentFailed(e)) => {
                self.status = OrderStatus::PaymentFailed;
                self.reason = Some(e.reason.clone());
            }
            (OrderStatus::Paid, OrderEvent::Approved(_)) => {
                self.status = OrderStatus::Approved;
            }
            (OrderStatus::Paid, OrderEvent::Rejected(e)) => {
                self.status = OrderStatus::Rejected;
                self.reason = Some(e.reason.clone());
            }
            (OrderStatus::Pending | OrderStatus::Paid, OrderEvent::Cancelled(e)) => {
                self.status = OrderStatus::Cancelled;
                self.reason = Some(e.reason.clone());
            }
            (OrderStatus::Rejected | OrderStatus::Cancelled, OrderEvent::PaymentRefunded(e)) => {
                let Some(debited) = self.payment_id else {
                    return Err(FoldError::RefundWithoutDebit {
                        order_id: self.order_id,
                    });
                };
                if self.refunded {
                    return Err(FoldError::RefundedTwice {
                        order_id: self.order_id,
                    });
                }
                if debited != e.payment_id {
                    return Err(FoldError::PaymentMismatch {
                        order_id: self.order_id,
                        debited,
                        refunded: e.payment_id,
                    });
                }
                self.refunded = true;
            }
            _ => return Err(illegal),
        }
        self.version += 1;
        Ok(())
    }

    /// True when the order was debited, then rejected or cancelled, and not yet refunded:
    /// the payment worker owes the customer a refund.
    pub fn needs_refund(&self) -> bool {
        matches!(self.status, OrderStatus::Rejected | OrderStatus::Cancelled)
            && self.payment_id.is_some()
            && !self.refunded
    }
}
