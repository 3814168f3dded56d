//! Every decision, on every status: the event it produces or the refusal it gives.

use super::given::*;
use crate::{
    Approved, Cancelled, OrderEvent, OrderStatus, PaymentDebited, PaymentFailed, PaymentRefunded,
    Refusal, Rejected,
};

/// One event history per status, plus the refunded ones.
fn histories() -> Vec<(OrderStatus, Vec<OrderEvent>)> {
    vec![
        (OrderStatus::Pending, vec![created()]),
        (OrderStatus::Paid, vec![created(), debited()]),
        (
            OrderStatus::Approved,
            vec![created(), debited(), approved()],
        ),
        (OrderStatus::PaymentFailed, vec![created(), failed()]),
        (
            OrderStatus::Rejected,
            vec![created(), debited(), rejected()],
        ),
        (
            OrderStatus::Rejected,
            vec![created(), debited(), rejected(), refunded()],
        ),
        (OrderStatus::Cancelled, vec![created(), cancelled()]),
        (
            OrderStatus::Cancelled,
            vec![created(), debited(), cancelled()],
        ),
        (
            OrderStatus::Cancelled,
            vec![created(), debited(), cancelled(), refunded()],
        ),
    ]
}

// settle_payment

#[test]
fn a_pending_order_is_debited_when_the_balance_covers_it() {
    let order = given(&[created()])
        .when(|order| order.settle_payment(PAYMENT_ID, Some(money("100.00"))))
        .then(PaymentDebited {
            order_id: ORDER_ID,
            customer_id: "c1".into(),
            amount: money("25.00"),
            payment_id: PAYMENT_ID,
        });
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.payment_id, Some(PAYMENT_ID));
    assert_eq!(order.version, 2);
}

#[test]
fn a_balance_of_exactly_the_amount_is_enough() {
    given(&[created()])
        .when(|order| order.settle_payment(PAYMENT_ID, Some(money("25.00"))))
        .then(debited());
}

#[test]
fn a_balance_one_cent_short_fails_the_payment() {
    let order = given(&[created()])
        .when(|order| order.settle_payment(PAYMENT_ID, Some(money("24.99"))))
        .then(PaymentFailed {
            order_id: ORDER_ID,
            customer_id: "c1".into(),
            amount: money("25.00"),
            reason: "insufficient funds".into(),
        });
    assert_eq!(order.status, OrderStatus::PaymentFailed);
    assert_eq!(order.reason.as_deref(), Some("insufficient funds"));
    assert_eq!(order.payment_id, None);
}

#[test]
fn a_customer_without_a_wallet_fails_the_payment() {
    given(&[created()])
        .when(|order| order.settle_payment(PAYMENT_ID, None))
        .then(failed());
}

#[test]
fn only_a_pending_order_is_paid() {
    for (status, history) in histories() {
        if status == OrderStatus::Pending {
            continue;
        }
        given(&history)
            .when(|order| order.settle_payment(PAYMENT_ID, Some(money("100.00"))))
            .then_refused(Refusal::NotPending { status });
    }
}

#[test]
fn a_payment_after_a_cancel_is_refused() {
    given(&[created(), cancelled()])
        .when(|order| order.settle_payment(PAYMENT_ID, Some(money("100.00"))))
        .then_refused(Refusal::NotPending {
            status: OrderStatus::Cancelled,
        });
}

// review

#[test]
fn a_paid_order_within_the_limit_is_approved() {
    let order = given(&[created(), debited()])
        .when(|order| order.review(money("100.00")))
        .then(Approved { order_id: ORDER_ID });
    assert_eq!(order.status, OrderStatus::Approved);
    assert!(order.status.is_final());
}

#[test]
fn an_amount_equal_to_the_limit_is_approved() {
    given(&[created(), debited()])
        .when(|order| order.review(money("25.00")))
        .then(approved());
}

#[test]
fn a_paid_order_above_the_limit_is_rejected_naming_the_limit() {
    let order = given(&[created(), debited()])
        .when(|order| order.review(money("20.00")))
        .then(Rejected {
            order_id: ORDER_ID,
            reason: "amount 25.00 exceeds the review limit of 20.00".into(),
        });
    assert_eq!(order.status, OrderStatus::Rejected);
    assert!(order.needs_refund());
}

#[test]
fn the_review_decided_from_the_debit_alone_is_the_review_of_the_paid_order() {
    let OrderEvent::PaymentDebited(debit) = debited() else {
        panic!("debited() is a debit");
    };
    for limit in ["100.00", "25.00", "24.99", "0.00"] {
        let paid = crate::Order::fold(&[created(), debited()])
            .expect("folds")
            .expect("has an order");
        assert_eq!(
            crate::review_debit(&debit, money(limit)),
            paid.review(money(limit)).expect("a Paid order is reviewed"),
            "limit {limit}"
        );
    }
}

#[test]
fn only_a_paid_order_is_reviewed() {
    for (status, history) in histories() {
        if status == OrderStatus::Paid {
            continue;
        }
        given(&history)
            .when(|order| order.review(money("100.00")))
            .then_refused(Refusal::NotPaid { status });
    }
}

// cancel

#[test]
fn a_pending_order_is_cancelled() {
    let order = given(&[created()])
        .when(|order| order.cancel("changed my mind"))
        .then(Cancelled {
            order_id: ORDER_ID,
            reason: "changed my mind".into(),
        });
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert!(!order.needs_refund(), "nothing was debited");
}

#[test]
fn a_paid_order_is_cancelled_and_then_owes_a_refund() {
    let order = given(&[created(), debited()])
        .when(|order| order.cancel("changed my mind"))
        .then(cancelled());
    assert!(order.needs_refund());
}

#[test]
fn cancelling_a_final_order_is_too_late() {
    for (status, history) in histories() {
        if matches!(status, OrderStatus::Pending | OrderStatus::Paid) {
            continue;
        }
        given(&history)
            .when(|order| order.cancel("changed my mind"))
            .then_refused(Refusal::TooLate { status });
    }
}

#[test]
fn cancel_after_approval_is_too_late() {
    given(&[created(), debited(), approved()])
        .when(|order| order.cancel("too slow"))
        .then_refused(Refusal::TooLate {
            status: OrderStatus::Approved,
        });
}

// refund

#[test]
fn a_rejected_order_is_refunded_with_the_debit() {
    let order = given(&[created(), debited(), rejected()])
        .when(|order| order.refund())
        .then(PaymentRefunded {
            order_id: ORDER_ID,
            customer_id: "c1".into(),
            amount: money("25.00"),
            payment_id: PAYMENT_ID,
        });
    assert!(order.refunded);
    assert_eq!(
        order.status,
        OrderStatus::Rejected,
        "a refund keeps the status"
    );
    assert!(!order.needs_refund());
}

#[test]
fn a_cancelled_order_that_was_paid_is_refunded() {
    let order = given(&[created(), debited(), cancelled()])
        .when(|order| order.refund())
        .then(refunded());
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(order.version, 4);
}

#[test]
fn a_cancelled_order_that_was_never_paid_has_nothing_to_refund() {
    given(&[created(), cancelled()])
        .when(|order| order.refund())
        .then_refused(Refusal::NothingToRefund);
}

#[test]
fn a_refunded_order_is_not_refunded_again() {
    given(&[created(), debited(), rejected(), refunded()])
        .when(|order| order.refund())
        .then_refused(Refusal::AlreadyRefunded);
    given(&[created(), debited(), cancelled(), refunded()])
        .when(|order| order.refund())
        .then_refused(Refusal::AlreadyRefunded);
}

#[test]
fn only_rejected_or_cancelled_orders_are_refunded() {
    for (status, history) in histories() {
        if matches!(status, OrderStatus::Rejected | OrderStatus::Cancelled) {
            continue;
        }
        given(&history)
            .when(|order| order.refund())
            .then_refused(Refusal::NotRefundable { status });
    }
}

#[test]
fn refusals_explain_themselves() {
    assert_eq!(
        Refusal::TooLate {
            status: OrderStatus::Approved
        }
        .to_string(),
        "too late to cancel: the order is Approved"
    );
    assert_eq!(
        Refusal::NotPending {
            status: OrderStatus::Cancelled
        }
        .to_string(),
        "the order is Cancelled, not Pending"
    );
}
