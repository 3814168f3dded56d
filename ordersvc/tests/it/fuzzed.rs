//! What `scripts/fuzz-api` (schemathesis against the OpenAPI document) found, kept fixed.

use axum::http::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{Stack, get, place, post_json};

/// The hex form `GET /api/orders` hands out as `next`, built by hand from the documented shape.
fn cursor(nanos: i128, order_id: Uuid) -> String {
    format!("{nanos}|{order_id}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn text_with_a_nul_character_is_refused_as_invalid_and_nothing_is_stored() {
    // PostgreSQL keeps no U+0000 in TEXT or JSONB: these were 500s (the event store's "internal
    // error", or ordersdb's) and must be client errors that append nothing.
    let stack = Stack::start().await;
    let order_id = place(&stack).await;
    let before = stack.stored_events().await;

    let body = json!({"customer_id": "c1", "restaurant_id": "r1",
        "order_items": [{"code": "p\u{0}1", "name": "Pizza", "unit_price": 1.1, "quantity": 2}]});
    let answer = stack.call(post_json("/api/orders", body.to_string())).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["details"][0]["field"], "order_items[0].code");

    let answer = stack.call(get("/api/orders?customer_id=%C2%87%00")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);

    let answer = stack
        .call(post_json(
            &format!("/api/orders/{order_id}/cancel"),
            json!({"reason": "a\u{0}b"}).to_string(),
        ))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );

    assert_eq!(stack.stored_events().await, before, "nothing was appended");
}

#[tokio::test]
async fn values_the_document_calls_valid_are_accepted() {
    // Each was a 400 or 422 for a request that matched the document.
    let stack = Stack::start().await;

    // Any cursor of the documented shape is read (it was only ever one this API handed out).
    let after = cursor(1_700_000_000_000_000_000, Uuid::new_v4());
    let answer = stack
        .call(get(&format!("/api/orders?customer_id=c1&after={after}")))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let document = ordersvc::openapi_document();
    let pattern = document["paths"]["/api/orders"]["get"]["parameters"][2]["schema"]["pattern"]
        .as_str()
        .expect("the after pattern");
    assert!(pattern.starts_with("^(2d)?(3[0-9]){1,20}7c"), "{pattern}");

    // min_version is documented up to i64::MAX: the largest is a version not reached yet, not a 400.
    let answer = stack
        .call(get(&format!(
            "/api/orders/{}?min_version={}",
            Uuid::new_v4(),
            i64::MAX
        )))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    let schema = &document["paths"]["/api/orders/{id}"]["get"]["parameters"][1]["schema"];
    assert_eq!(schema["maximum"], json!(i64::MAX));
}
