//! Orders through the saga, across real processes.

use std::str::FromStr as _;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};

use e2e_tests::{Pipeline, order_body};

fn money(s: &str) -> Decimal {
    Decimal::from_str(s).expect("decimal")
}

/// Waits until `consumer` delivered and acked the message at stream sequence `seen` and has
/// nothing pending or unacked (workers ack after their effect committed).
async fn wait_idle_past(pipeline: &Pipeline, consumer: &str, seen: u64) {
    let js = pipeline.jetstream().await;
    testkit::jetstream::wait_consumer_idle(&js, "ORDERS", consumer, seen, Duration::from_secs(30))
        .await;
}

/// The stream sequence of the last message on `subject`.
async fn last_on(pipeline: &Pipeline, subject: &str) -> u64 {
    let js = pipeline.jetstream().await;
    let stream = js.get_stream("ORDERS").await.expect("stream");
    stream
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap_or_else(|err| panic!("nothing on {subject}: {err}"))
        .sequence
}

#[tokio::test]
async fn orders_reach_approved_payment_failed_and_rejected_with_a_refund() {
    let pipeline = Pipeline::start().await.expect("the pipeline starts");

    let approved = pipeline.place("alice", "12.50", 2).await;
    let failed = pipeline.place("bob", "600.00", 2).await;
    let rejected = pipeline.place("carol", "300.00", 2).await;

    let order = pipeline.wait_final(&approved).await;
    assert_eq!(order["status"], "Approved", "{order}");
    assert_eq!(order["amount"], "25.00");
    assert_eq!(
        pipeline.event_types(&approved).await,
        ["created", "paymentdebited", "approved"]
    );
    assert_eq!(pipeline.wallet("alice").await, money("975.00"));

    let order = pipeline.wait_final(&failed).await;
    assert_eq!(order["status"], "PaymentFailed", "{order}");
    assert_eq!(
        pipeline.event_types(&failed).await,
        ["created", "paymentfailed"]
    );
    assert_eq!(
        pipeline.wallet("bob").await,
        money("1000.00"),
        "nothing debited"
    );

    let order = pipeline.wait_final(&rejected).await;
    assert_eq!(order["status"], "Rejected", "{order}");
    assert_eq!(order["refunded"], true);
    assert_eq!(
        pipeline.event_types(&rejected).await,
        ["created", "paymentdebited", "rejected", "paymentrefunded"]
    );
    assert_eq!(
        pipeline.wallet("carol").await,
        money("1000.00"),
        "the refund restored the balance"
    );

    // ordersvc served those reads as its read-only role: it cannot write the read model. The
    // deadline watcher scans it as a read-only role of its own.
    let admin = sqlx::PgPool::connect(&pipeline.database_url("postgres"))
        .await
        .expect("connecting as the administrator");
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = 'ordersdb' ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .expect("pg_stat_activity");
    assert_eq!(
        users,
        ["deadlinewatcher", "orders", "ordersvc"],
        "querymodelworker writes as orders, ordersvc and deadlinewatcher read as themselves"
    );
    let reader = sqlx::PgPool::connect(&pipeline.role_url("ordersvc", "ordersdb"))
        .await
        .expect("connecting as ordersvc");
    let refused = sqlx::query("DELETE FROM orders")
        .execute(&reader)
        .await
        .expect_err("the reader cannot write");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_customers_wallet_is_debited_once_per_order_and_refunds_restore_it() {
    let pipeline = Pipeline::start().await.expect("the pipeline starts");
    // 100 and 200 approved (700 left); 600 debited, rejected and refunded (700 again); 300 approved
    // (400 left); 700 fails on the 400 left.
    for (price, status) in [
        ("100.00", "Approved"),
        ("200.00", "Approved"),
        ("600.00", "Rejected"),
        ("300.00", "Approved"),
        ("700.00", "PaymentFailed"),
    ] {
        let id = pipeline.place("dave", price, 1).await;
        let order = pipeline.wait_final(&id).await;
        assert_eq!(order["status"], status, "order of {price}: {order}");
    }
    assert_eq!(pipeline.wallet("dave").await, money("400.00"));
}

#[tokio::test]
async fn a_cancel_racing_the_approval_stays_cancelled_and_is_refunded() {
    let mut pipeline = Pipeline::start().await.expect("the pipeline starts");
    // Hold the review worker so the order waits, paid, for its review.
    pipeline.signal("reviewworker", 0, "STOP");
    let id = pipeline.place("erin", "40.00", 1).await;
    pipeline
        .wait_for(&id, "Paid", |o| o["status"] == "Paid")
        .await;

    let (status, body) = pipeline.cancel(&id).await;
    assert_eq!(status, 200, "{body}");
    pipeline.signal("reviewworker", 0, "CONT");

    let order = pipeline.wait_final(&id).await;
    assert_eq!(order["status"], "Cancelled", "{order}");
    assert_eq!(order["refunded"], true);
    // The review worker saw the debit after the cancel and left the order alone.
    let debit = last_on(&pipeline, "ORDERS.paymentdebited").await;
    wait_idle_past(&pipeline, "reviewworker", debit).await;
    assert_eq!(
        pipeline.event_types(&id).await,
        ["created", "paymentdebited", "cancelled", "paymentrefunded"]
    );
    assert_eq!(pipeline.wallet("erin").await, money("1000.00"));
}

#[tokio::test]
async fn a_cancel_after_approval_is_a_conflict_and_changes_nothing() {
    let pipeline = Pipeline::start().await.expect("the pipeline starts");
    let id = pipeline.place("frank", "10.00", 1).await;
    pipeline
        .wait_for(&id, "Approved", |o| o["status"] == "Approved")
        .await;
    let (status, body) = pipeline.cancel(&id).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(
        pipeline.event_types(&id).await,
        ["created", "paymentdebited", "approved"]
    );
}

#[tokio::test]
async fn the_same_idempotency_key_twice_is_one_order() {
    let pipeline = Pipeline::start().await.expect("the pipeline starts");
    let body = order_body("gina", "5.00", 3);
    let (first_status, first) = pipeline.post_order(&body, Some("key-123")).await;
    let (second_status, second) = pipeline.post_order(&body, Some("key-123")).await;
    assert_eq!(first_status, 201, "{first}");
    assert!(second_status == 201 || second_status == 200, "{second}");
    assert_eq!(first["order_id"], second["order_id"]);
    let id = first["order_id"].as_str().expect("id");
    pipeline.wait_final(id).await;
    assert_eq!(
        pipeline
            .event_types(id)
            .await
            .iter()
            .filter(|t| *t == "created")
            .count(),
        1
    );
    assert_eq!(
        pipeline.wallet("gina").await,
        money("985.00"),
        "debited once"
    );
}

#[tokio::test]
async fn a_redelivered_created_event_has_one_effect() {
    let pipeline = Pipeline::start().await.expect("the pipeline starts");
    let id = pipeline.place("hank", "20.00", 1).await;
    pipeline.wait_final(&id).await;

    // Publish the created event again, as a redelivery after a lost ack would bring it.
    let js = pipeline.jetstream().await;
    let stream = js.get_stream("ORDERS").await.expect("stream");
    let original = stream.get_raw_message(1).await.expect("first message");
    let mut headers = original.headers.clone();
    headers.insert("Nats-Msg-Id", "redelivered-copy");
    let copy = js
        .publish_with_headers(
            original.subject.to_string(),
            headers,
            original.payload.clone(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence;
    // Both workers that take created events had the copy and acked it (after any effect).
    wait_idle_past(&pipeline, "paymentworker", copy).await;
    wait_idle_past(&pipeline, "querymodelworker", copy).await;

    assert_eq!(
        pipeline.event_types(&id).await,
        ["created", "paymentdebited", "approved"]
    );
    assert_eq!(pipeline.wallet("hank").await, money("980.00"));
    let (_, order) = pipeline.get_order(&id).await;
    assert_eq!(order["version"], 3);
}

#[tokio::test]
async fn workers_killed_mid_flight_and_restarted_still_complete_every_order() {
    let mut pipeline = Pipeline::start().await.expect("the pipeline starts");
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(pipeline.place(&format!("ivy{i}"), "30.00", 1).await);
    }
    pipeline.kill("paymentworker", 0);
    pipeline.kill("reviewworker", 0);
    for i in 10..20 {
        ids.push(pipeline.place(&format!("ivy{i}"), "30.00", 1).await);
    }
    pipeline.spawn("paymentworker");
    pipeline.spawn("reviewworker");
    for id in &ids {
        let order = pipeline.wait_final(id).await;
        assert_eq!(order["status"], "Approved", "{order}");
        assert_eq!(pipeline.event_types(id).await.len(), 3, "no step twice");
    }
}

#[tokio::test]
async fn two_instances_of_each_worker_complete_every_order_once() {
    let mut pipeline = Pipeline::start().await.expect("the pipeline starts");
    for service in ["paymentworker", "reviewworker", "querymodelworker"] {
        pipeline.spawn(service);
    }
    pipeline.wait_ready().await.expect("the services are ready");
    let placing = (0..30).map(|i| {
        let customer = format!("jack{}", i % 5);
        let price = if i % 3 == 0 { "150.00" } else { "20.00" };
        let body = order_body(&customer, price, 1);
        let pipeline = &pipeline;
        async move {
            let (status, body) = pipeline.post_order(&body, None).await;
            assert_eq!(status, 201, "{body}");
            body["order_id"].as_str().expect("id").to_owned()
        }
    });
    let ids = futures::future::join_all(placing).await;
    for id in &ids {
        pipeline.wait_final(id).await;
        let types = pipeline.event_types(id).await;
        assert_eq!(
            types.iter().filter(|t| *t == "paymentdebited").count(),
            1,
            "{types:?}"
        );
        assert_eq!(
            types.iter().filter(|t| *t == "approved").count(),
            1,
            "{types:?}"
        );
    }
    // Each customer placed 6 orders: two of 150 and four of 20 → 380 debited.
    for i in 0..5 {
        assert_eq!(pipeline.wallet(&format!("jack{i}")).await, money("620.00"));
    }
}

#[tokio::test]
async fn rebuilding_the_read_model_yields_the_live_rows() {
    let pipeline = Pipeline::start().await.expect("the pipeline starts");
    let mut ids = vec![
        pipeline.place("kate", "10.00", 2).await,
        pipeline.place("kate", "700.00", 1).await,
        pipeline.place("leo", "1500.00", 1).await,
    ];
    let cancelled = pipeline.place("leo", "1.00", 1).await;
    let _ = pipeline.cancel(&cancelled).await;
    ids.push(cancelled);
    for id in &ids {
        pipeline.wait_final(id).await;
    }
    // Every order is final, its last event published: the read model has projected everything
    // once querymodelworker (which takes every subject) is idle past the stream's end.
    let last = pipeline
        .jetstream()
        .await
        .get_stream("ORDERS")
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    wait_idle_past(&pipeline, "querymodelworker", last).await;

    let fresh = pipeline
        .postgres
        .create_database("ordersdb_rebuilt")
        .await
        .expect("fresh database");
    let pool = sqlx::PgPool::connect(&fresh).await.expect("connect");
    order_readmodel::MIGRATOR.run(&pool).await.expect("migrate");
    pool.close().await;

    let output = std::process::Command::new(e2e_tests::pipeline::binary("querymodelworker"))
        .arg("rebuild")
        .envs(pipeline.env())
        .env("ORDERS_DATABASE_URL", &fresh)
        .output()
        .expect("rebuild runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let dump = |url: String| async move {
        let pool = sqlx::PgPool::connect(&url).await.expect("connect");
        let orders: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws('|', order_id::TEXT, customer_id, restaurant_id, status, amount::TEXT, \
             refunded::TEXT, version::TEXT, reason, trace_id, created_on::TEXT, updated_at::TEXT) \
             FROM orders ORDER BY order_id",
        )
        .fetch_all(&pool)
        .await
        .expect("orders");
        let items: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws('|', order_id::TEXT, line_no::TEXT, code, name, unit_price::TEXT, quantity::TEXT) \
             FROM order_items ORDER BY order_id, line_no",
        )
        .fetch_all(&pool)
        .await
        .expect("items");
        pool.close().await;
        (orders, items)
    };
    let live = dump(pipeline.database_url("ordersdb")).await;
    let rebuilt = dump(fresh).await;
    assert_eq!(live.0.len(), 4);
    assert_eq!(rebuilt, live);
}

#[tokio::test]
async fn bad_requests_get_a_json_error_never_a_5xx_and_append_nothing() {
    let pipeline = Pipeline::start().await.expect("the pipeline starts");
    let url = format!("{}/api/orders", pipeline.base_url());
    let good = order_body("mia", "1.00", 1);
    let mut three_decimals = good.clone();
    three_decimals["order_items"][0]["unit_price"] = json!("1.005");
    let mut zero_quantity = good.clone();
    zero_quantity["order_items"][0]["quantity"] = json!(0);
    let mut negative_price = good.clone();
    negative_price["order_items"][0]["unit_price"] = json!(-1);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "malformed JSON",
            pipeline
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body("{\"customer_id\":"),
            400,
        ),
        (
            "missing fields",
            pipeline
                .http
                .post(&url)
                .json(&json!({"customer_id": "mia"})),
            422,
        ),
        (
            "empty items",
            pipeline
                .http
                .post(&url)
                .json(&json!({"customer_id": "mia", "restaurant_id": "r", "order_items": []})),
            422,
        ),
        (
            "zero quantity",
            pipeline.http.post(&url).json(&zero_quantity),
            422,
        ),
        (
            "negative price",
            pipeline.http.post(&url).json(&negative_price),
            422,
        ),
        (
            "three decimals",
            pipeline.http.post(&url).json(&three_decimals),
            422,
        ),
        (
            "too large",
            pipeline
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(format!("{{\"x\":\"{}\"}}", "a".repeat(70 * 1024))),
            413,
        ),
        (
            "wrong media type",
            pipeline
                .http
                .post(&url)
                .header("content-type", "text/plain")
                .body(good.to_string()),
            415,
        ),
        (
            "unknown id",
            pipeline.http.get(format!("{url}/{}", uuid::Uuid::new_v4())),
            404,
        ),
        (
            "garbage id",
            pipeline.http.get(format!("{url}/not-an-id")),
            400,
        ),
        (
            "cancel unknown id",
            pipeline
                .http
                .post(format!("{url}/{}/cancel", uuid::Uuid::new_v4())),
            404,
        ),
    ];
    for (case, request, expected) in cases {
        let response = request.send().await.expect("answers");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{case}: {body}");
        assert!(
            body["error"].is_string(),
            "{case}: a JSON error, got {body}"
        );
    }
    assert_eq!(pipeline.count_events().await, 0, "nothing was appended");
}

#[tokio::test]
async fn every_service_stops_cleanly_on_sigterm() {
    let mut pipeline = Pipeline::start().await.expect("the pipeline starts");
    let id = pipeline.place("nina", "10.00", 1).await;
    pipeline.wait_final(&id).await;
    for service in [
        "ordersvc",
        "paymentworker",
        "reviewworker",
        "querymodelworker",
        "deadlinewatcher",
        "eventstore",
    ] {
        let status = pipeline.terminate(service, 0);
        assert!(status.success(), "{service} exited with {status}");
    }
}
