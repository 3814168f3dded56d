//! `POST /api/orders`.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;

use crate::harness::{REFERENCE_BODY, Stack, post_json, post_with_key, tokens, with_token};

#[tokio::test]
async fn the_reference_body_places_a_pending_order_with_an_exact_amount() {
    let stack = Stack::start().await;

    let answer = stack.call(post_json("/api/orders", REFERENCE_BODY)).await;

    // 201, a Location naming the order, and the amount as an exact string.
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let order_id = answer.body["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned();
    assert_eq!(
        answer.headers[header::LOCATION],
        format!("/api/orders/{order_id}").as_str()
    );
    assert_eq!(answer.body["status"], "Pending");
    assert_eq!(answer.body["amount"], "25.00");
    assert_eq!(answer.body["version"], 1);
    assert_eq!(answer.body["customer_id"], "c1");
    assert_eq!(
        answer.body["order_items"],
        json!([{"code": "p1", "name": "Pizza", "unit_price": "12.50", "quantity": 2}])
    );
    assert!(
        answer.body["created_on"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    // The event store holds exactly the created event, with the same amount.
    let events = stack.store.events(&order_id).await.expect("GetEvents");
    assert_eq!(events.len(), 1);
    let created = &events[0];
    assert_eq!(created.event_type, "created");
    assert_eq!(created.aggregate_type, "order");
    assert_eq!(created.aggregate_version, 1);
    assert_eq!(created.event_data["amount"], "25.00");
    assert_eq!(created.event_data["order_items"][0]["unit_price"], "12.50");
    assert_eq!(created.metadata["correlation_id"], order_id);
}

#[tokio::test]
async fn a_rejected_request_gets_its_status_and_appends_nothing() {
    let stack = Stack::start().await;
    let before = stack.stored_events().await;
    let item = |price: serde_json::Value, quantity: serde_json::Value| {
        json!({"customer_id": "c1", "restaurant_id": "r1",
               "order_items": [{"code": "p1", "name": "Pizza", "unit_price": price, "quantity": quantity}]})
        .to_string()
    };
    let oversized =
        json!({"customer_id": "c1", "restaurant_id": "r1", "padding": "x".repeat(70 * 1024)})
            .to_string();
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "malformed JSON",
            post_json("/api/orders", "{\"customer_id\":"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing fields",
            post_json("/api/orders", "{}"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "not an object",
            post_json("/api/orders", "[1, 2]"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty items",
            post_json(
                "/api/orders",
                r#"{"customer_id":"c1","restaurant_id":"r1","order_items":[]}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "zero quantity",
            post_json("/api/orders", item(json!(12.5), json!(0))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "negative quantity",
            post_json("/api/orders", item(json!(12.5), json!(-1))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "negative price",
            post_json("/api/orders", item(json!(-1), json!(1))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "three decimals",
            post_json("/api/orders", item(json!(12.505), json!(1))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "three decimals as text",
            post_json("/api/orders", item(json!("12.505"), json!(1))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "body over 64 KiB",
            post_json("/api/orders", oversized),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "wrong content type",
            Request::post("/api/orders")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(REFERENCE_BODY))
                .expect("request"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "no content type",
            Request::post("/api/orders")
                .body(Body::from(REFERENCE_BODY))
                .expect("request"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "blank idempotency key",
            post_with_key("/api/orders", " ", REFERENCE_BODY),
            StatusCode::BAD_REQUEST,
        ),
        (
            "idempotency key too long",
            post_with_key("/api/orders", &"k".repeat(201), REFERENCE_BODY),
            StatusCode::BAD_REQUEST,
        ),
    ];

    for (case, request, expected) in cases {
        let answer = stack.call(request).await;
        assert_eq!(answer.status, expected, "{case}: {}", answer.body);
        assert!(
            answer.body["error"].is_string(),
            "{case}: every error is JSON: {}",
            answer.body
        );
    }

    // A 422 names the field that is wrong.
    let answer = stack
        .call(post_json("/api/orders", item(json!(12.5), json!(0))))
        .await;
    assert_eq!(
        answer.body["details"][0]["field"],
        "order_items[0].quantity"
    );

    assert_eq!(
        stack.stored_events().await,
        before,
        "no rejected request appended an event"
    );
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_its_customer() {
    let stack = Stack::start().await;
    let body = |customer: &str| REFERENCE_BODY.replace("\"c1\"", &format!("\"{customer}\""));
    let post = |customer: &str| {
        with_token(
            post_with_key("/api/orders", "shared-key", body(customer)),
            &tokens().customer(customer),
        )
    };
    let alice = stack.call_raw(post("alice")).await;
    let bob = stack.call_raw(post("bob")).await;
    // Bob's key is his own: a new order, not Alice's, not a 422 that tells the key was used.
    assert_eq!(alice.status, StatusCode::CREATED, "{}", alice.body);
    assert_eq!(bob.status, StatusCode::CREATED, "{}", bob.body);
    assert_ne!(alice.body["order_id"], bob.body["order_id"]);
    assert_eq!(bob.body["customer_id"], "bob");
    assert_eq!(stack.stored_events().await, 2);
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_answer_the_same_order_without_a_second_event() {
    let stack = Stack::start().await;

    let first = stack
        .call(post_with_key("/api/orders", "order-42", REFERENCE_BODY))
        .await;
    let retry = stack
        .call(post_with_key("/api/orders", "order-42", REFERENCE_BODY))
        .await;

    // The retry is answered like the first attempt, from the stored event.
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.body, first.body);
    assert_eq!(
        retry.headers[header::LOCATION],
        first.headers[header::LOCATION]
    );
    let order_id = first.body["order_id"].as_str().expect("order_id");
    assert_eq!(
        stack.store.events(order_id).await.expect("GetEvents").len(),
        1
    );
    assert_eq!(stack.stored_events().await, 1);

    // The same key with another order is refused, and appends nothing.
    let other = REFERENCE_BODY.replace("\"quantity\":2", "\"quantity\":3");
    let reused = stack
        .call(post_with_key("/api/orders", "order-42", other))
        .await;
    assert_eq!(
        reused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reused.body
    );
    assert_eq!(
        reused.body["error"],
        "Idempotency-Key was already used with a different request"
    );
    assert_eq!(stack.stored_events().await, 1);

    // Another key is another order.
    let another = stack
        .call(post_with_key("/api/orders", "order-43", REFERENCE_BODY))
        .await;
    assert_eq!(another.status, StatusCode::CREATED);
    assert_ne!(another.body["order_id"], first.body["order_id"]);
}

#[tokio::test]
async fn a_post_whose_event_commit_was_cut_is_a_503_and_its_retry_answers_the_one_order() {
    let stack = Stack::start_with_eventstore_cut().await;
    let proxy = stack.eventstore_cut.as_ref().expect("the cut proxy");
    // The event store commits the created event (its append's one statement, its own transaction);
    // neither it nor ordersvc hears that it did.
    proxy.arm_execution("INSERT INTO outbox");
    let first = stack
        .call(post_with_key("/api/orders", "order-77", REFERENCE_BODY))
        .await;
    assert_eq!(proxy.cuts(), 1, "the event store's append was cut");
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        first.body
    );
    assert!(first.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(stack.stored_events().await, 1, "the commit happened");

    // The client's retry with the same key is answered from the committed event.
    let retry = stack
        .call(post_with_key("/api/orders", "order-77", REFERENCE_BODY))
        .await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    let order_id = retry.body["order_id"].as_str().expect("order_id");
    assert_eq!(
        stack.store.events(order_id).await.expect("GetEvents").len(),
        1
    );
    assert_eq!(stack.stored_events().await, 1);
}
