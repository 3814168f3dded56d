//! Saga deadlines: which step an open order waits for, when it is overdue, and what the cancel says.

use std::time::Duration;

use time::OffsetDateTime;

use super::given::*;
use crate::{
    Cancelled, DeadlineDecision, Deadlines, OrderStatus, Step, deadline_event_id, deadline_reason,
    deadline_step, format_duration,
};

const DEADLINES: Deadlines = Deadlines {
    payment: Duration::from_secs(30),
    review: Duration::from_secs(60),
};

fn seconds_after(since: OffsetDateTime, seconds: f64) -> OffsetDateTime {
    since + time::Duration::seconds_f64(seconds)
}

#[test]
fn a_pending_order_waits_for_its_payment_and_a_paid_one_for_its_review() {
    assert_eq!(Step::awaited_in(OrderStatus::Pending), Some(Step::Payment));
    assert_eq!(Step::awaited_in(OrderStatus::Paid), Some(Step::Review));
    for status in OrderStatus::ALL.into_iter().filter(|s| s.is_final()) {
        assert_eq!(Step::awaited_in(status), None, "{status}");
    }
}

#[test]
fn a_pending_order_is_cancelled_once_its_payment_deadline_has_passed() {
    let since = at();
    let order = given(&[created()]).when(|order| {
        match order.enforce_deadline(since, seconds_after(since, 30.0), &DEADLINES) {
            DeadlineDecision::Cancel { event, due } => {
                assert_eq!(due.step, Step::Payment);
                assert_eq!(due.at, seconds_after(since, 30.0));
                Ok(event)
            }
            other => panic!("not cancelled: {other:?}"),
        }
    });
    let order = order.then(Cancelled {
        order_id: ORDER_ID,
        reason: "payment not received within the 30s payment deadline".into(),
    });
    assert_eq!(order.status, OrderStatus::Cancelled);
}

#[test]
fn one_instant_before_the_deadline_the_order_still_has_time() {
    let since = at();
    let paid = crate::Order::fold(&[created(), debited()])
        .expect("folds")
        .expect("exists");
    let just_before = seconds_after(since, 59.999);
    match paid.enforce_deadline(since, just_before, &DEADLINES) {
        DeadlineDecision::NotYet(due) => {
            assert_eq!(due.step, Step::Review);
            assert_eq!(due.deadline, Duration::from_secs(60));
            assert_eq!(due.at, seconds_after(since, 60.0));
        }
        other => panic!("decided {other:?} before the deadline"),
    }
    match paid.enforce_deadline(since, seconds_after(since, 60.0), &DEADLINES) {
        DeadlineDecision::Cancel { event, .. } => assert_eq!(
            event,
            Cancelled {
                order_id: ORDER_ID,
                reason: "review not completed within the 1m review deadline".into(),
            }
            .into()
        ),
        other => panic!("not cancelled at the deadline: {other:?}"),
    }
}

#[test]
fn a_debit_just_before_the_payment_deadline_starts_the_review_clock() {
    // Created at t, debited at t + 29.9 s: at t + 31 s the payment deadline of the Pending order
    // has passed, but the order is Paid since t + 29.9 s and its review has until t + 89.9 s.
    let created_at = at();
    let debited_at = seconds_after(created_at, 29.9);
    let paid = crate::Order::fold(&[created(), debited()])
        .expect("folds")
        .expect("exists");
    let decision = paid.enforce_deadline(debited_at, seconds_after(created_at, 31.0), &DEADLINES);
    assert!(
        matches!(decision, DeadlineDecision::NotYet(due) if due.step == Step::Review
            && due.at == seconds_after(created_at, 89.9)),
        "{decision:?}"
    );
}

#[test]
fn a_final_order_has_no_deadline() {
    let since = at();
    let long_after = seconds_after(since, 86_400.0);
    for events in [
        vec![created(), debited(), approved()],
        vec![created(), failed()],
        vec![created(), debited(), rejected()],
        vec![created(), cancelled()],
        vec![created(), debited(), cancelled(), refunded()],
    ] {
        let order = crate::Order::fold(&events).expect("folds").expect("exists");
        assert_eq!(
            order.enforce_deadline(since, long_after, &DEADLINES),
            DeadlineDecision::Closed(order.status)
        );
    }
}

#[test]
fn a_huge_deadline_saturates_instead_of_panicking() {
    let deadlines = Deadlines {
        payment: Duration::MAX,
        review: Duration::MAX,
    };
    let pending = crate::Order::fold(&[created()])
        .expect("folds")
        .expect("exists");
    assert!(matches!(
        pending.enforce_deadline(at(), seconds_after(at(), 1e9), &deadlines),
        DeadlineDecision::NotYet(_)
    ));
}

#[test]
fn reasons_name_the_step_and_the_deadline_and_are_recognised() {
    assert_eq!(
        deadline_reason(Step::Payment, Duration::from_millis(1500)),
        "payment not received within the 1500ms payment deadline"
    );
    assert_eq!(
        deadline_reason(Step::Review, Duration::from_secs(90)),
        "review not completed within the 1m30s review deadline"
    );
    for step in Step::ALL {
        let reason = deadline_reason(step, Duration::from_secs(3));
        assert_eq!(deadline_step(&reason), Some(step), "{reason}");
    }
    assert_eq!(deadline_step("changed my mind"), None);
    assert_eq!(deadline_step("cancelled by customer"), None);
}

#[test]
fn durations_are_written_as_people_write_them() {
    for (duration, text) in [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_secs(1), "1s"),
        (Duration::from_secs(30), "30s"),
        (Duration::from_secs(60), "1m"),
        (Duration::from_secs(150), "2m30s"),
        (Duration::from_secs(3600), "1h"),
        (Duration::from_secs(3661), "1h1m1s"),
    ] {
        assert_eq!(format_duration(duration), text);
    }
}

#[test]
fn each_step_of_an_order_has_one_deadline_cancel_id_that_never_changes() {
    let payment = deadline_event_id(ORDER_ID, Step::Payment);
    assert_eq!(payment, deadline_event_id(ORDER_ID, Step::Payment));
    assert_ne!(payment, deadline_event_id(ORDER_ID, Step::Review));
    assert_ne!(payment, deadline_event_id(OTHER_ORDER_ID, Step::Payment));
    assert_eq!(payment.get_version_num(), 5);
    // Computed independently (Python: SHA-1 over namespace, order id bytes and step name).
    assert_eq!(payment.to_string(), "19224748-f5df-5639-8bac-12f8bb19dc96");
    assert_eq!(
        deadline_event_id(ORDER_ID, Step::Review).to_string(),
        "36199131-7b79-5078-aa15-170cb1bcf4ab"
    );
}
