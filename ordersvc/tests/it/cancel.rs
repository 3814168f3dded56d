//! `POST /api/orders/{id}/cancel`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use order_domain::{Approved, NewOrder, OrderEvent, OrderRequest, PaymentDebited, payment_id};
use pipeline_runtime::eventstore::{EventStoreClient, NewEvent};
use serde_json::json;
use uuid::Uuid;

use crate::harness::{REFERENCE_BODY, Stack, place, post_json};

async fn append(client: &EventStoreClient, event: OrderEvent, expected_version: i64) {
    client
        .append(
            NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                aggregate_id: event.order_id().to_string(),
                aggregate_type: order_domain::AGGREGATE_TYPE.to_owned(),
                data: event.to_json(),
                metadata: BTreeMap::new(),
            },
            expected_version,
        )
        .await
        .expect("append");
}

#[tokio::test]
async fn cancelling_a_pending_order_appends_a_cancelled_event_at_version_2() {
    let stack = Stack::start().await;
    let order_id = place(&stack).await;

    let answer = stack
        .call(post_json(&format!("/api/orders/{order_id}/cancel"), ""))
        .await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"order_id": order_id, "status": "Cancelled", "version": 2})
    );
    let events = stack
        .store
        .events(&order_id.to_string())
        .await
        .expect("GetEvents");
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].event_type, "cancelled");
    assert_eq!(events[1].aggregate_version, 2);
    assert_eq!(events[1].event_data["reason"], "cancelled by customer");

    // Cancelling again (a client retrying a cancel whose answer it lost) answers the same and
    // appends nothing.
    let again = stack
        .call(post_json(&format!("/api/orders/{order_id}/cancel"), ""))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(
        again.body,
        json!({"order_id": order_id, "status": "Cancelled", "version": 2})
    );
    let events = stack
        .store
        .events(&order_id.to_string())
        .await
        .expect("GetEvents");
    assert_eq!(events.len(), 2, "a second cancel appends nothing");

    // The reason the customer gives is stored.
    let second = place(&stack).await;
    let answer = stack
        .call(post_json(
            &format!("/api/orders/{second}/cancel"),
            r#"{"reason":"changed my mind"}"#,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let events = stack
        .store
        .events(&second.to_string())
        .await
        .expect("GetEvents");
    assert_eq!(events[1].event_data["reason"], "changed my mind");
}

#[tokio::test]
async fn cancelling_after_approval_is_a_conflict_and_an_unknown_order_is_not_found() {
    let stack = Stack::start().await;
    let request: OrderRequest = serde_json::from_str(REFERENCE_BODY).expect("request");
    let order_id = Uuid::new_v4();
    let created = NewOrder::parse(request)
        .expect("valid")
        .place(order_id, time::OffsetDateTime::now_utc());
    let amount = created.amount;
    append(&stack.store, created.into(), 0).await;
    append(
        &stack.store,
        PaymentDebited {
            order_id,
            customer_id: "c1".into(),
            amount,
            payment_id: payment_id(order_id),
        }
        .into(),
        1,
    )
    .await;
    append(&stack.store, Approved { order_id }.into(), 2).await;

    let answer = stack
        .call(post_json(&format!("/api/orders/{order_id}/cancel"), ""))
        .await;

    // 409, naming the status that makes it too late; nothing appended.
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert!(
        answer.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Approved")),
        "{}",
        answer.body
    );
    assert_eq!(stack.stored_events().await, 3);

    let unknown = stack
        .call(post_json(
            &format!("/api/orders/{}/cancel", Uuid::new_v4()),
            "",
        ))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);

    let garbage = stack.call(post_json("/api/orders/nope/cancel", "")).await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST, "{}", garbage.body);

    let blank_reason = stack
        .call(post_json(
            &format!("/api/orders/{order_id}/cancel"),
            r#"{"reason":"  "}"#,
        ))
        .await;
    assert_eq!(blank_reason.status, StatusCode::UNPROCESSABLE_ENTITY);
}
