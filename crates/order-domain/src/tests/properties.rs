//! Properties over random histories and random command sequences.

use proptest::prelude::*;
use uuid::Uuid;

use super::given::*;
use crate::{
    Approved, Cancelled, Money, Order, OrderEvent, OrderStatus, PaymentDebited, PaymentFailed,
    PaymentRefunded, Rejected, event_type,
};

/// Mostly the order under test, sometimes another: foreign events must be refused too.
fn order_id() -> impl Strategy<Value = Uuid> {
    prop_oneof![9 => Just(ORDER_ID), 1 => Just(OTHER_ORDER_ID)]
}

fn a_payment_id() -> impl Strategy<Value = Uuid> {
    prop_oneof![4 => Just(PAYMENT_ID), 1 => Just(OTHER_PAYMENT_ID)]
}

fn amount() -> impl Strategy<Value = Money> {
    (0i64..10_000).prop_map(|cents| Money::from_cents(cents).expect("in range"))
}

fn event() -> impl Strategy<Value = OrderEvent> {
    prop_oneof![
        1 => order_id().prop_map(created_for),
        3 => (order_id(), amount(), a_payment_id()).prop_map(|(order_id, amount, payment_id)| {
            PaymentDebited { order_id, customer_id: "c1".into(), amount, payment_id }.into()
        }),
        2 => (order_id(), amount()).prop_map(|(order_id, amount)| {
            PaymentFailed { order_id, customer_id: "c1".into(), amount, reason: "no".into() }.into()
        }),
        2 => order_id().prop_map(|order_id| Approved { order_id }.into()),
        2 => order_id().prop_map(|order_id| Rejected { order_id, reason: "no".into() }.into()),
        2 => order_id().prop_map(|order_id| Cancelled { order_id, reason: "no".into() }.into()),
        3 => (order_id(), amount(), a_payment_id()).prop_map(|(order_id, amount, payment_id)| {
            PaymentRefunded { order_id, customer_id: "c1".into(), amount, payment_id }.into()
        }),
    ]
}

/// Random histories, most of them starting with `created` so that folding gets past the first
/// event and exercises the transitions.
fn history() -> impl Strategy<Value = Vec<OrderEvent>> {
    (
        prop::bool::weighted(0.9),
        prop::collection::vec(event(), 0..8),
    )
        .prop_map(|(starts_created, mut events)| {
            if starts_created {
                events.insert(0, created());
            }
            events
        })
}

/// DESIGN.md's edges, written independently of `Order::apply`.
fn allowed(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    matches!(
        (from, to),
        (Pending, Paid)
            | (Paid, Approved)
            | (Pending, PaymentFailed)
            | (Paid, Rejected)
            | (Pending | Paid, Cancelled)
    )
}

#[derive(Debug, Clone)]
enum Command {
    Settle(Option<Money>),
    Review(Money),
    Cancel,
    Refund,
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        prop::option::of(amount()).prop_map(Command::Settle),
        amount().prop_map(Command::Review),
        Just(Command::Cancel),
        Just(Command::Refund),
    ]
}

proptest! {
    #[test]
    fn no_history_makes_fold_panic(events in history()) {
        let _ = Order::fold(&events);
    }

    #[test]
    fn every_accepted_history_follows_the_state_machine(events in history()) {
        if let Ok(Some(order)) = Order::fold(&events) {
            prop_assert_eq!(order.version, events.len() as i64);
            let OrderEvent::Created(first) = &events[0] else {
                return Err(TestCaseError::fail("accepted without `created` first"));
            };
            let mut walk = Order::from_created(first);
            let mut debit = None;
            for event in &events[1..] {
                let before = walk.clone();
                walk.apply(event).expect("every prefix of an accepted history is accepted");
                prop_assert_eq!(event.order_id(), before.order_id);
                match event {
                    OrderEvent::PaymentRefunded(refund) => {
                        prop_assert_eq!(walk.status, before.status);
                        prop_assert!(matches!(before.status, OrderStatus::Rejected | OrderStatus::Cancelled));
                        prop_assert_eq!(Some(refund.payment_id), debit, "refunds the debit");
                        prop_assert!(!before.refunded && walk.refunded);
                    }
                    _ => {
                        prop_assert!(allowed(before.status, walk.status),
                            "{} -> {} by {}", before.status, walk.status, event.event_type());
                        prop_assert_eq!(walk.refunded, before.refunded);
                    }
                }
                if let OrderEvent::PaymentDebited(d) = event {
                    debit = Some(d.payment_id);
                }
                prop_assert_eq!(walk.version, before.version + 1);
            }
            prop_assert_eq!(walk, order);
        }
    }

    #[test]
    fn a_refused_event_leaves_the_order_as_it_was(events in history(), next in event()) {
        if let Ok(Some(order)) = Order::fold(&events) {
            let mut after = order.clone();
            if after.apply(&next).is_err() {
                prop_assert_eq!(after, order);
            }
        }
    }

    #[test]
    fn every_decided_event_is_accepted_by_the_order(commands in prop::collection::vec(command(), 0..10)) {
        let mut order = Order::fold(&[created()]).expect("folds").expect("an order");
        let mut history = vec![created()];
        for command in commands {
            let decided = match command {
                Command::Settle(funds) => order.settle_payment(PAYMENT_ID, funds),
                Command::Review(limit) => order.review(limit),
                Command::Cancel => order.cancel("no"),
                Command::Refund => order.refund(),
            };
            if let Ok(event) = decided {
                order.apply(&event).expect("a decided event applies");
                history.push(event);
            }
        }
        prop_assert_eq!(Order::fold(&history).expect("folds"), Some(order.clone()));
        // Whatever happened, money never stays taken from a final order that ended badly.
        if order.needs_refund() {
            prop_assert!(order.refund().is_ok());
        }
    }

    #[test]
    fn a_decoded_event_is_the_encoded_one(event in event()) {
        let decoded = OrderEvent::decode(event.event_type(), &event.to_json()).expect("decodes");
        prop_assert_eq!(decoded, event);
    }

    #[test]
    fn any_type_and_data_decode_without_panic(t in "[a-z]{0,16}", s in ".{0,40}") {
        let _ = OrderEvent::decode(&t, &serde_json::json!({"order_id": s, "reason": s}));
        for known in event_type::ALL {
            let _ = OrderEvent::decode(known, &serde_json::json!({"order_id": s}));
        }
    }

    #[test]
    fn cents_written_as_a_json_number_are_read_exactly(cents in 0i64..1_000_000_000_000_000) {
        let text = format!("{}.{:02}", cents / 100, cents % 100);
        let money: Money = serde_json::from_str(&text).expect("money");
        prop_assert_eq!(money.to_cents(), cents);
        let string: Money = serde_json::from_str(&format!("\"{text}\"")).expect("money");
        prop_assert_eq!(string, money);
        prop_assert_eq!(money.to_string(), text);
    }

    #[test]
    fn any_text_parses_as_money_without_panic(s in ".{0,40}") {
        let _ = s.parse::<Money>();
    }

    #[test]
    fn any_float_reads_as_money_without_panic(f in any::<f64>()) {
        if let Some(n) = serde_json::Number::from_f64(f) {
            let _ = Money::from_json_number(&n);
        }
    }
}
