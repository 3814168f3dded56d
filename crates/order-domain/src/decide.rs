//! Decisions: from an order's state (and the command's inputs) to the next event, or a refusal.
//! Nothing here reads a clock, a database or the network; the caller brings those in.

use uuid::Uuid;

use crate::events::{
    Approved, Cancelled, OrderEvent, PaymentDebited, PaymentFailed, PaymentRefunded, Rejected,
};
use crate::money::Money;
use crate::order::{Order, OrderStatus};

/// The reason of a `paymentfailed` event when the balance does not cover the order.
pub const INSUFFICIENT_FUNDS: &str = "insufficient funds";

/// Why an order refuses a command. Workers treat most of these as an already-handled outcome
/// (e.g. the customer cancelled before the payment); the HTTP API answers 409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the order is {status}, not Pending")]
    NotPending { status: OrderStatus },
    #[error("the order is {status}, not Paid")]
    NotPaid { status: OrderStatus },
    #[error("too late to cancel: the order is {status}")]
    TooLate { status: OrderStatus },
    #[error("the order is {status}; only a Rejected or Cancelled order is refunded")]
    NotRefundable { status: OrderStatus },
    #[error("nothing to refund: the order was never debited")]
    NothingToRefund,
    #[error("the payment was already refunded")]
    AlreadyRefunded,
}

/// Reviews the order that `debited` left Paid, from the event alone (it carries the amount): the
/// rule of [`Order::review`]. Valid only while the debit is the order's last event, which the caller
/// makes sure of by appending the decision with the debit's version as the expected version: if the
/// order moved on (the customer cancelled), that append conflicts and nothing is decided.
pub fn review_debit(debited: &PaymentDebited, max_amount: Money) -> OrderEvent {
    review_rule(debited.order_id, debited.amount, max_amount)
}

/// Approved up to `max_amount` inclusive, rejected above it.
fn review_rule(order_id: Uuid, amount: Money, max_amount: Money) -> OrderEvent {
    if amount <= max_amount {
        Approved { order_id }.into()
    } else {
        Rejected {
            order_id,
            reason: format!("amount {amount} exceeds the review limit of {max_amount}"),
        }
        .into()
    }
}

impl Order {
    /// Pays a Pending order from the customer's available balance (`None`: no wallet, so no
    /// funds). Debits when the balance covers the amount, otherwise fails the payment.
    pub fn settle_payment(
        &self,
        payment_id: Uuid,
        funds: Option<Money>,
    ) -> Result<OrderEvent, Refusal> {
        if self.status != OrderStatus::Pending {
            return Err(Refusal::NotPending {
                status: self.status,
            });
        }
        Ok(match funds {
            Some(balance) if balance >= self.amount => PaymentDebited {
                order_id: self.order_id,
                customer_id: self.customer_id.clone(),
                amount: self.amount,
                payment_id,
            }
            .into(),
            _ => PaymentFailed {
                order_id: self.order_id,
                customer_id: self.customer_id.clone(),
                amount: self.amount,
                reason: INSUFFICIENT_FUNDS.to_owned(),
            }
            .into(),
        })
    }

    /// Reviews a Paid order: approved up to `max_amount` inclusive, rejected above it.
    pub fn review(&self, max_amount: Money) -> Result<OrderEvent, Refusal> {
        if self.status != OrderStatus::Paid {
            return Err(Refusal::NotPaid {
                status: self.status,
            });
        }
        Ok(review_rule(self.order_id, self.amount, max_amount))
    }

    /// Cancels a Pending or Paid order; later it is too late.
    pub fn cancel(&self, reason: impl Into<String>) -> Result<OrderEvent, Refusal> {
        match self.status {
            OrderStatus::Pending | OrderStatus::Paid => Ok(Cancelled {
                order_id: self.order_id,
                reason: reason.into(),
            }
            .into()),
            status => Err(Refusal::TooLate { status }),
        }
    }

    /// Gives back the debit of a Rejected or Cancelled order, once.
    pub fn refund(&self) -> Result<OrderEvent, Refusal> {
        if !matches!(self.status, OrderStatus::Rejected | OrderStatus::Cancelled) {
            return Err(Refusal::NotRefundable {
                status: self.status,
            });
        }
        let Some(payment_id) = self.payment_id else {
            return Err(Refusal::NothingToRefund);
        };
        if self.refunded {
            return Err(Refusal::AlreadyRefunded);
        }
        Ok(PaymentRefunded {
            order_id: self.order_id,
            customer_id: self.customer_id.clone(),
            amount: self.amount,
            payment_id,
        }
        .into())
    }
}
