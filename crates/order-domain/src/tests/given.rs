//! A tiny given/when/then harness and the events of one sample order.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Approved, Cancelled, Money, Order, OrderCreated, OrderEvent, OrderItem, PaymentDebited,
    PaymentFailed, PaymentRefunded, Refusal, Rejected,
};

pub const ORDER_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0001);
pub const OTHER_ORDER_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0002);
pub const PAYMENT_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_00aa);
pub const OTHER_PAYMENT_ID: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_00bb);

/// The past of the order under test.
pub fn given(events: &[OrderEvent]) -> Given {
    let order = Order::fold(events)
        .expect("the given events fold")
        .expect("the given events start with `created`");
    Given { order }
}

pub struct Given {
    order: Order,
}

impl Given {
    /// The decision under test.
    pub fn when(self, decide: impl FnOnce(&Order) -> Result<OrderEvent, Refusal>) -> Then {
        let outcome = decide(&self.order);
        Then {
            order: self.order,
            outcome,
        }
    }
}

pub struct Then {
    order: Order,
    outcome: Result<OrderEvent, Refusal>,
}

impl Then {
    /// The decision produced `expected`, and the order accepts it. Returns the order after it.
    pub fn then(self, expected: impl Into<OrderEvent>) -> Order {
        let expected = expected.into();
        assert_eq!(self.outcome, Ok(expected.clone()));
        let mut order = self.order;
        let version = order.version;
        order
            .apply(&expected)
            .expect("a decided event applies to the order that decided it");
        assert_eq!(order.version, version + 1);
        order
    }

    /// The decision refused with `expected`.
    pub fn then_refused(self, expected: Refusal) {
        assert_eq!(self.outcome, Err(expected));
    }
}

pub fn at() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a valid timestamp")
}

pub fn money(s: &str) -> Money {
    s.parse().expect("valid money")
}

/// Two pizzas at 12.50: 25.00.
pub fn created() -> OrderEvent {
    created_for(ORDER_ID)
}

pub fn created_for(order_id: Uuid) -> OrderEvent {
    OrderCreated {
        order_id,
        customer_id: "c1".into(),
        restaurant_id: "r1".into(),
        order_items: vec![OrderItem {
            code: "p1".into(),
            name: "Pizza".into(),
            unit_price: money("12.50"),
            quantity: 2,
        }],
        amount: money("25.00"),
        created_on: at(),
    }
    .into()
}

pub fn debited() -> OrderEvent {
    PaymentDebited {
        order_id: ORDER_ID,
        customer_id: "c1".into(),
        amount: money("25.00"),
        payment_id: PAYMENT_ID,
    }
    .into()
}

pub fn failed() -> OrderEvent {
    PaymentFailed {
        order_id: ORDER_ID,
        customer_id: "c1".into(),
        amount: money("25.00"),
        reason: crate::INSUFFICIENT_FUNDS.into(),
    }
    .into()
}

pub fn approved() -> OrderEvent {
    Approved { order_id: ORDER_ID }.into()
}

pub fn rejected() -> OrderEvent {
    Rejected {
        order_id: ORDER_ID,
        reason: "amount 25.00 exceeds the review limit of 20.00".into(),
    }
    .into()
}

pub fn cancelled() -> OrderEvent {
    Cancelled {
        order_id: ORDER_ID,
        reason: "changed my mind".into(),
    }
    .into()
}

pub fn refunded() -> OrderEvent {
    PaymentRefunded {
        order_id: ORDER_ID,
        customer_id: "c1".into(),
        amount: money("25.00"),
        payment_id: PAYMENT_ID,
    }
    .into()
}
