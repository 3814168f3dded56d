//! Folding: which event may follow which status, and the typed errors of the others.

use super::given::*;
use crate::{FoldError, Order, OrderEvent, OrderStatus, PaymentRefunded, event_type};

#[test]
fn no_events_is_no_order() {
    assert_eq!(Order::fold(std::iter::empty()), Ok(None));
}

#[test]
fn created_starts_a_pending_order_at_version_one() {
    let order = Order::fold(&[created()]).expect("folds").expect("an order");
    assert_eq!(order.order_id, ORDER_ID);
    assert_eq!(order.customer_id, "c1");
    assert_eq!(order.restaurant_id, "r1");
    assert_eq!(order.items.len(), 1);
    assert_eq!(order.amount, money("25.00"));
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.version, 1);
    assert_eq!(order.payment_id, None);
    assert!(!order.refunded);
    assert_eq!(order.created_on, at());
    assert_eq!(order.reason, None);
}

#[test]
fn the_version_counts_the_events() {
    let events = [created(), debited(), rejected(), refunded()];
    let order = Order::fold(&events).expect("folds").expect("an order");
    assert_eq!(order.version, 4);
    assert_eq!(
        order.reason.as_deref(),
        Some("amount 25.00 exceeds the review limit of 20.00")
    );
}

#[test]
fn a_history_must_start_with_created() {
    for first in [
        debited(),
        failed(),
        approved(),
        rejected(),
        cancelled(),
        refunded(),
    ] {
        assert_eq!(
            Order::fold(std::slice::from_ref(&first)),
            Err(FoldError::NotCreatedFirst {
                event_type: first.event_type()
            })
        );
    }
}

#[test]
fn an_order_is_created_once() {
    assert_eq!(
        Order::fold(&[created(), created()]),
        Err(FoldError::AlreadyCreated { order_id: ORDER_ID })
    );
}

#[test]
fn an_event_of_another_order_is_refused() {
    let mut order = Order::fold(&[created_for(OTHER_ORDER_ID)])
        .expect("folds")
        .expect("an order");
    assert_eq!(
        order.apply(&debited()),
        Err(FoldError::WrongOrder {
            event_type: event_type::PAYMENT_DEBITED,
            order_id: OTHER_ORDER_ID,
            event_order_id: ORDER_ID,
        })
    );
}

/// The state machine of DESIGN.md as a table: the status an event leads to from a status.
fn expected_next(status: OrderStatus, event: &OrderEvent) -> Option<OrderStatus> {
    use OrderStatus::*;
    match (status, event.event_type()) {
        (Pending, "paymentdebited") => Some(Paid),
        (Pending, "paymentfailed") => Some(PaymentFailed),
        (Paid, "approved") => Some(Approved),
        (Paid, "rejected") => Some(Rejected),
        (Pending | Paid, "cancelled") => Some(Cancelled),
        _ => None,
    }
}

#[test]
fn every_status_accepts_exactly_its_transitions() {
    let histories = [
        vec![created()],
        vec![created(), debited()],
        vec![created(), debited(), approved()],
        vec![created(), failed()],
        vec![created(), debited(), rejected()],
        vec![created(), cancelled()],
    ];
    let next_events = [debited(), failed(), approved(), rejected(), cancelled()];
    for history in histories {
        let order = Order::fold(&history).expect("folds").expect("an order");
        for event in &next_events {
            let mut after = order.clone();
            let result = after.apply(event);
            match expected_next(order.status, event) {
                Some(status) => {
                    assert_eq!(
                        result,
                        Ok(()),
                        "{} after {}",
                        event.event_type(),
                        order.status
                    );
                    assert_eq!(after.status, status);
                    assert_eq!(after.version, order.version + 1);
                }
                None => {
                    assert_eq!(
                        result,
                        Err(FoldError::IllegalTransition {
                            event_type: event.event_type(),
                            status: order.status
                        })
                    );
                    assert_eq!(after, order, "a refused event changes nothing");
                }
            }
        }
    }
}

#[test]
fn a_refund_needs_a_rejected_or_cancelled_order() {
    for history in [
        vec![created()],
        vec![created(), debited()],
        vec![created(), debited(), approved()],
        vec![created(), failed()],
    ] {
        let mut order = Order::fold(&history).expect("folds").expect("an order");
        assert_eq!(
            order.apply(&refunded()),
            Err(FoldError::IllegalTransition {
                event_type: event_type::PAYMENT_REFUNDED,
                status: order.status
            })
        );
    }
}

#[test]
fn a_refund_without_a_debit_is_refused() {
    assert_eq!(
        Order::fold(&[created(), cancelled(), refunded()]),
        Err(FoldError::RefundWithoutDebit { order_id: ORDER_ID })
    );
}

#[test]
fn a_second_refund_is_refused() {
    assert_eq!(
        Order::fold(&[created(), debited(), rejected(), refunded(), refunded()]),
        Err(FoldError::RefundedTwice { order_id: ORDER_ID })
    );
}

#[test]
fn a_refund_of_another_payment_is_refused() {
    let wrong: OrderEvent = PaymentRefunded {
        order_id: ORDER_ID,
        customer_id: "c1".into(),
        amount: money("25.00"),
        payment_id: OTHER_PAYMENT_ID,
    }
    .into();
    assert_eq!(
        Order::fold(&[created(), debited(), cancelled(), wrong]),
        Err(FoldError::PaymentMismatch {
            order_id: ORDER_ID,
            debited: PAYMENT_ID,
            refunded: OTHER_PAYMENT_ID,
        })
    );
}

#[test]
fn nothing_follows_a_final_status_but_a_refund() {
    for status in OrderStatus::ALL {
        assert_eq!(
            status.is_final(),
            !matches!(status, OrderStatus::Pending | OrderStatus::Paid)
        );
    }
}

#[test]
fn statuses_have_the_names_of_the_design() {
    let names: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "Pending",
            "Paid",
            "Approved",
            "PaymentFailed",
            "Rejected",
            "Cancelled"
        ]
    );
    for status in OrderStatus::ALL {
        assert_eq!(status.as_str().parse(), Ok(status));
        assert_eq!(status.to_string(), status.as_str());
        assert_eq!(
            serde_json::to_value(status).expect("serializes"),
            serde_json::Value::from(status.as_str())
        );
    }
    assert!("pending".parse::<OrderStatus>().is_err());
}

#[test]
fn fold_errors_explain_themselves() {
    assert_eq!(
        FoldError::IllegalTransition {
            event_type: "approved",
            status: OrderStatus::Pending
        }
        .to_string(),
        "event `approved` cannot follow status Pending"
    );
}
