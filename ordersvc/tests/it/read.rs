//! `GET /api/orders/{id}`, `GET /api/orders?customer_id=…` and `GET /api/orders/{id}/events`,
//! over rows written directly into ordersdb (querymodelworker's job in production).

use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use std::time::Duration;

use pipeline_runtime::stream::{READ_MODEL_SUBJECT, ReadModelChange};

use crate::harness::{Answer, Stack, call, get, place, post_json};

/// Writes an order the way the projection would: one row, its items.
async fn insert_order(
    stack: &Stack,
    customer_id: &str,
    created_on: OffsetDateTime,
    version: i64,
) -> Uuid {
    let order_id = Uuid::new_v4();
    let amount: Decimal = "25.10".parse().expect("decimal");
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, restaurant_id, status, amount, refunded, version, \
         reason, trace_id, created_on, updated_at) \
         VALUES ($1, $2, 'r1', 'Paid', $3, false, $4, NULL, '0af7651916cd43dd8448eb211c80319c', $5, $5)",
    )
    .bind(order_id)
    .bind(customer_id)
    .bind(amount)
    .bind(version)
    .bind(created_on)
    .execute(&stack.orders_db)
    .await
    .expect("insert order");
    for (line_no, (code, price, quantity)) in [("p1", "12.55", 1i64), ("p2", "6.30", 2)]
        .into_iter()
        .enumerate()
    {
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, code, name, unit_price, quantity) \
             VALUES ($1, $2, $3, 'Item', $4, $5)",
        )
        .bind(order_id)
        .bind(i64::try_from(line_no).expect("line"))
        .bind(code)
        .bind(price.parse::<Decimal>().expect("decimal"))
        .bind(quantity)
        .execute(&stack.orders_db)
        .await
        .expect("insert item");
    }
    order_id
}

#[tokio::test]
async fn an_order_is_read_from_the_read_model_with_its_exact_amount() {
    let stack = Stack::start().await;
    let created_on = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    let order_id = insert_order(&stack, "c1", created_on, 2).await;

    let answer = stack.call(get(&format!("/api/orders/{order_id}"))).await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({
            "order_id": order_id, "customer_id": "c1", "restaurant_id": "r1", "status": "Paid",
            "amount": "25.10", "refunded": false, "version": 2, "reason": null,
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "created_on": "2023-11-14T22:13:20Z", "updated_at": "2023-11-14T22:13:20Z",
            "order_items": [
                {"code": "p1", "name": "Item", "unit_price": "12.55", "quantity": 1},
                {"code": "p2", "name": "Item", "unit_price": "6.30", "quantity": 2},
            ],
        })
    );
    assert!(answer.headers.get("x-read-model-stale").is_none());

    // A version the row already has answers at once; a later one answers stale after the wait.
    let caught_up = stack
        .call(get(&format!("/api/orders/{order_id}?min_version=2")))
        .await;
    assert_eq!(caught_up.status, StatusCode::OK);
    assert!(caught_up.headers.get("x-read-model-stale").is_none());
    let behind = stack
        .call(get(&format!("/api/orders/{order_id}?min_version=3")))
        .await;
    assert_eq!(behind.status, StatusCode::OK);
    assert_eq!(behind.headers["x-read-model-stale"], "true");
    assert_eq!(behind.body["version"], 2);

    for (path, expected) in [
        (
            format!("/api/orders/{}", Uuid::new_v4()),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/api/orders/{}?min_version=1", Uuid::new_v4()),
            StatusCode::NOT_FOUND,
        ),
        ("/api/orders/not-a-uuid".to_owned(), StatusCode::BAD_REQUEST),
        (
            format!("/api/orders/{order_id}?min_version=0"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/orders/{order_id}?min_version=x"),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let answer = stack.call(get(&path)).await;
        assert_eq!(answer.status, expected, "{path}: {}", answer.body);
        assert!(answer.body["error"].is_string(), "{path}: {}", answer.body);
    }
}

#[tokio::test]
async fn a_customers_orders_are_listed_newest_first_page_by_page() {
    let stack = Stack::start().await;
    let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    let mut ids = Vec::new();
    for i in 0..5 {
        // Two orders share a timestamp: the order id breaks the tie.
        let at = start + time::Duration::seconds(i.min(3));
        ids.push((at, insert_order(&stack, "c1", at, 1).await));
    }
    insert_order(&stack, "someone-else", start, 1).await;
    ids.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = ids.iter().map(|(_, id)| id.to_string()).collect();

    let mut seen = Vec::new();
    let mut path = "/api/orders?customer_id=c1&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let answer = stack.call(get(&path)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        pages += 1;
        let orders = answer.body["orders"].as_array().expect("orders");
        assert!(orders.len() <= 2);
        for order in orders {
            assert_eq!(order["customer_id"], "c1");
            assert_eq!(order["amount"], "25.10");
            assert_eq!(order["order_items"].as_array().map(Vec::len), Some(2));
            seen.push(order["order_id"].as_str().expect("id").to_owned());
        }
        match answer.body["next"].as_str() {
            Some(next) => path = format!("/api/orders?customer_id=c1&limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, expected, "every order once, newest first");
    assert_eq!(pages, 3);

    let all = stack.call(get("/api/orders?customer_id=c1")).await;
    assert_eq!(all.body["orders"].as_array().map(Vec::len), Some(5));
    assert_eq!(all.body["next"], serde_json::Value::Null);

    for path in [
        "/api/orders",
        "/api/orders?customer_id=",
        "/api/orders?customer_id=c1&limit=0",
        "/api/orders?customer_id=c1&limit=101",
        "/api/orders?customer_id=c1&after=garbage",
    ] {
        let answer = stack.call(get(path)).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn the_event_history_lists_every_event_of_an_order() {
    let stack = Stack::start().await;
    let order_id = place(&stack).await;
    let cancelled = stack
        .call(post_json(&format!("/api/orders/{order_id}/cancel"), ""))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);

    let answer = stack
        .call(get(&format!("/api/orders/{order_id}/events")))
        .await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let events = answer.body.as_array().expect("a list");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_type"], "created");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["data"]["amount"], "25.00");
    assert_eq!(
        events[0]["metadata"]["correlation_id"],
        order_id.to_string()
    );
    assert!(events[0]["event_id"].is_string() && events[0]["created_at"].is_string());
    assert_eq!(events[1]["event_type"], "cancelled");
    assert_eq!(events[1]["version"], 2);

    let unknown = stack
        .call(get(&format!("/api/orders/{}/events", Uuid::new_v4())))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let garbage = stack.call(get("/api/orders/123/events")).await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
}

/// Reads `order_id` at `min_version` from `state`'s router in a task of its own; waits until the
/// request has read its order, found it behind and is waiting.
async fn waiting_read(
    state: &ordersvc::AppState,
    order_id: Uuid,
    min_version: i64,
) -> tokio::task::JoinHandle<Answer> {
    let app = ordersvc::router(state.clone());
    let path = format!("/api/orders/{order_id}?min_version={min_version}");
    let request = tokio::spawn(async move { call(app, get(&path)).await });
    while state.reads_waiting() == 0 {
        assert!(!request.is_finished(), "the read answered before waiting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    request
}

async fn set_version(stack: &Stack, order_id: Uuid, version: i64) {
    sqlx::query("UPDATE orders SET version = $2, status = 'Approved' WHERE order_id = $1")
        .bind(order_id)
        .bind(version)
        .execute(&stack.orders_db)
        .await
        .expect("update order");
}

/// Publishes one read-model notice saying `order_id` is at `version` now.
async fn notify(stack: &Stack, order_id: Uuid, version: i64) {
    let client = async_nats::connect(stack.nats.url()).await.expect("NATS");
    let notice = serde_json::to_vec(&[ReadModelChange {
        order_id,
        version,
        event_type: "orderapproved".into(),
    }])
    .expect("notice");
    client
        .publish(READ_MODEL_SUBJECT, notice.into())
        .await
        .expect("publish notice");
    client.flush().await.expect("flush");
}

/// Has a read of `order_id` at `version` wait on `state`, then moves the read model to `version`
/// and says so with one notice, and returns the read's answer. A request sleeps only once the
/// server has the subscription (or after its re-read interval): the one notice must reach it, well
/// within the 10 s given (the callers' waits are 30 s, their re-reads 10 minutes).
async fn answered_by_one_notice(
    stack: &Stack,
    state: &ordersvc::AppState,
    order_id: Uuid,
    version: i64,
) -> Answer {
    let request = waiting_read(state, order_id, version).await;
    assert!(state.follows_read_model(), "a read waits: notices followed");
    set_version(stack, order_id, version).await;
    notify(stack, order_id, version).await;
    tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("the notice answers the read within 10 s")
        .expect("the read task")
}

/// An order at version 2, and an instance that follows the notices (until `linger` after the
/// last waiting read) but does not re-read within a wait: only a notice can answer a waiting read
/// before its wait (30 s) is over.
async fn answered_by_notices_only(
    linger: Duration,
) -> (Stack, Uuid, ordersvc::AppState, tokio::task::JoinHandle<()>) {
    let stack = Stack::start().await;
    let created_on = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    let order_id = insert_order(&stack, "c1", created_on, 2).await;
    let (config, state) = stack.state_with(|config| {
        config.min_version_wait_ms = 30_000;
        config.min_version_reread_ms = 600_000;
    });
    let follower = state
        .follow_read_model_lingering(&config.nats, linger)
        .await
        .expect("follows the stack's NATS");
    (stack, order_id, state, follower)
}

#[tokio::test]
async fn a_min_version_read_is_answered_by_the_notice_of_its_order() {
    let (stack, order_id, state, follower) = answered_by_notices_only(Duration::from_secs(5)).await;
    // The read model moves to version 3, and querymodelworker says so, once.
    // Expected: the read answers with version 3, caught up, while its wait (30 s) still runs: at
    // the end of the wait it would read the row once more and find version 3 anyway, so an answer
    // only counts before then.
    let answer = answered_by_one_notice(&stack, &state, order_id, 3).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["version"], 3, "{}", answer.body);
    assert_eq!(answer.body["status"], "Approved", "{}", answer.body);
    assert!(
        answer.headers.get("x-read-model-stale").is_none(),
        "caught up, not stale: {:?}",
        answer.headers
    );
    follower.abort();
}

#[tokio::test]
async fn the_notices_are_followed_only_while_a_min_version_read_waits() {
    let linger = Duration::from_millis(200);
    let (stack, order_id, state, follower) = answered_by_notices_only(linger).await;

    // Expected: reads that do not wait never subscribe: a plain read, and a min_version read
    // that the row already satisfies. Every notice would otherwise wake this instance for nothing.
    let app = ordersvc::router(state.clone());
    let plain = call(app.clone(), get(&format!("/api/orders/{order_id}"))).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.body);
    let satisfied = call(app, get(&format!("/api/orders/{order_id}?min_version=2"))).await;
    assert_eq!(satisfied.status, StatusCode::OK, "{}", satisfied.body);
    tokio::time::sleep(linger * 2).await;
    assert!(
        !state.follows_read_model(),
        "nobody waited: no subscription"
    );

    let answer = answered_by_one_notice(&stack, &state, order_id, 3).await;
    assert_eq!(answer.body["version"], 3, "{}", answer.body);

    // Expected: the subscription goes within a few lingers of the last waiting read.
    let gone_by = tokio::time::Instant::now() + Duration::from_secs(5);
    while state.follows_read_model() {
        assert!(
            tokio::time::Instant::now() < gone_by,
            "still subscribed 5 s after the last read left (linger {linger:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Expected: the next waiting read subscribes again and is answered by its notice.
    let answer = answered_by_one_notice(&stack, &state, order_id, 4).await;
    assert_eq!(answer.body["version"], 4, "{}", answer.body);
    follower.abort();
}

#[tokio::test]
async fn a_lost_notice_costs_a_min_version_read_one_re_read_not_its_answer() {
    let stack = Stack::start().await;
    let created_on = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    let order_id = insert_order(&stack, "c1", created_on, 2).await;
    // This instance follows no notices at all: every one is lost to it.
    let (_, state) = stack.state_with(|config| {
        config.min_version_wait_ms = 30_000;
        config.min_version_reread_ms = 100;
    });
    let request = waiting_read(&state, order_id, 3).await;

    set_version(&stack, order_id, 3).await;

    // Expected: the slow re-read finds version 3 and answers it, caught up, while the wait (30 s)
    // still runs (at its end the row is read once more anyway).
    let answer = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("the re-read answers well within the wait")
        .expect("the read task");
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["version"], 3, "{}", answer.body);
    assert!(answer.headers.get("x-read-model-stale").is_none());
    assert_eq!(state.reads_waiting(), 0, "nobody is left waiting");
}
