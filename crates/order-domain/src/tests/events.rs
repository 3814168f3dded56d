//! The stored form of events: field names, round trips, typed decode errors.

use serde_json::json;

use super::given::*;
use crate::{AGGREGATE_TYPE, DecodeError, OrderEvent, event_type};

fn all_events() -> Vec<OrderEvent> {
    vec![
        created(),
        debited(),
        failed(),
        approved(),
        rejected(),
        cancelled(),
        refunded(),
    ]
}

#[test]
fn event_types_are_the_subject_suffixes() {
    let types: Vec<&str> = all_events().iter().map(OrderEvent::event_type).collect();
    assert_eq!(
        types,
        [
            "created",
            "paymentdebited",
            "paymentfailed",
            "approved",
            "rejected",
            "cancelled",
            "paymentrefunded"
        ]
    );
    assert_eq!(types, event_type::ALL);
    assert_eq!(AGGREGATE_TYPE, "order");
}

#[test]
fn every_event_survives_a_json_round_trip() {
    for event in all_events() {
        let data = event.to_json();
        assert!(data.is_object());
        let text = serde_json::to_string(&data).expect("json");
        let back: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            OrderEvent::decode(event.event_type(), &back).expect("decodes"),
            event
        );
        assert_eq!(event.order_id(), ORDER_ID);
    }
}

#[test]
fn to_json_is_the_derived_serialization() {
    for event in all_events() {
        let derived = match &event {
            OrderEvent::Created(e) => serde_json::to_value(e),
            OrderEvent::PaymentDebited(e) => serde_json::to_value(e),
            OrderEvent::PaymentFailed(e) => serde_json::to_value(e),
            OrderEvent::Approved(e) => serde_json::to_value(e),
            OrderEvent::Rejected(e) => serde_json::to_value(e),
            OrderEvent::Cancelled(e) => serde_json::to_value(e),
            OrderEvent::PaymentRefunded(e) => serde_json::to_value(e),
        };
        assert_eq!(
            derived.expect("serializes"),
            event.to_json(),
            "{}",
            event.event_type()
        );
    }
}

#[test]
fn created_has_the_field_names_of_the_design() {
    assert_eq!(
        created().to_json(),
        json!({
            "order_id": "00000000-0000-4000-8000-000000000001",
            "customer_id": "c1",
            "restaurant_id": "r1",
            "order_items": [{"code": "p1", "name": "Pizza", "unit_price": "12.50", "quantity": 2}],
            "amount": "25.00",
            "created_on": "2023-11-14T22:13:20Z"
        })
    );
}

#[test]
fn the_other_events_have_the_field_names_of_the_design() {
    let order_id = "00000000-0000-4000-8000-000000000001";
    let payment_id = "00000000-0000-4000-8000-0000000000aa";
    assert_eq!(
        debited().to_json(),
        json!({"order_id": order_id, "customer_id": "c1", "amount": "25.00", "payment_id": payment_id})
    );
    assert_eq!(
        failed().to_json(),
        json!({"order_id": order_id, "customer_id": "c1", "amount": "25.00", "reason": "insufficient funds"})
    );
    assert_eq!(approved().to_json(), json!({"order_id": order_id}));
    assert_eq!(
        rejected().to_json(),
        json!({"order_id": order_id, "reason": "amount 25.00 exceeds the review limit of 20.00"})
    );
    assert_eq!(
        cancelled().to_json(),
        json!({"order_id": order_id, "reason": "changed my mind"})
    );
    assert_eq!(
        refunded().to_json(),
        json!({"order_id": order_id, "customer_id": "c1", "amount": "25.00", "payment_id": payment_id})
    );
}

#[test]
fn decode_reads_numbers_for_money_and_other_offsets() {
    let data = json!({
        "order_id": "00000000-0000-4000-8000-000000000001",
        "customer_id": "c1",
        "restaurant_id": "r1",
        "order_items": [{"code": "p1", "name": "Pizza", "unit_price": 12.5, "quantity": 2}],
        "amount": 25,
        "created_on": "2023-11-15T00:13:20+02:00",
        "added_later": {"ignored": true}
    });
    assert_eq!(
        OrderEvent::decode("created", &data).expect("decodes"),
        created()
    );
}

#[test]
fn an_offset_with_seconds_is_written_in_utc() {
    let mut event = created();
    if let OrderEvent::Created(e) = &mut event {
        let offset = time::UtcOffset::from_hms(1, 0, 30).expect("offset");
        e.created_on = at().to_offset(offset);
    }
    assert_eq!(event.to_json()["created_on"], json!("2023-11-14T22:13:20Z"));
    assert_eq!(
        OrderEvent::decode("created", &event.to_json()).expect("decodes"),
        event
    );
}

#[test]
fn an_unknown_event_type_is_a_typed_error() {
    let error = OrderEvent::decode("shipped", &json!({"order_id": ORDER_ID})).expect_err("unknown");
    assert!(matches!(&error, DecodeError::UnknownType(t) if t == "shipped"));
    assert_eq!(error.to_string(), "unknown order event type `shipped`");
    // Types are exact: the subject suffix, not the variant name.
    assert!(matches!(
        OrderEvent::decode("Created", &created().to_json()),
        Err(DecodeError::UnknownType(_))
    ));
}

#[test]
fn bad_data_is_a_typed_error() {
    for (event_type, data) in [
        ("approved", json!({})),
        ("approved", json!({"order_id": "not-a-uuid"})),
        ("approved", json!("a string")),
        (
            "paymentdebited",
            json!({"order_id": ORDER_ID, "customer_id": "c1", "amount": "1.001", "payment_id": PAYMENT_ID}),
        ),
        ("created", json!({"order_id": ORDER_ID})),
    ] {
        let error = OrderEvent::decode(event_type, &data).expect_err(event_type);
        assert!(
            matches!(&error, DecodeError::InvalidData { event_type: t, .. } if *t == event_type),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with(&format!("invalid data for order event `{event_type}`"))
        );
    }
}
