//! Saga deadlines with the real binaries: deadlinewatcher cancels an order whose payment or review
//! does not come, the existing compensation refunds it, and a worker that comes back late changes
//! nothing. Deadlines are short (2–3 s) and the watcher sweeps every 200 ms.

use std::collections::HashMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::Value;
use testkit::{Zipkin, eventually};
use tokio::time::Instant;

use e2e_tests::pipeline::binary;
use e2e_tests::{Options, Pipeline};

/// The customer's starting balance (paymentworker's default).
const INITIAL_CREDIT: &str = "1000.00";

/// A pipeline whose watcher works with these deadlines and sweeps every 200 ms.
async fn start(payment: &str, review: &str, extra: &[(&str, &str)]) -> Pipeline {
    let mut env: Vec<(String, String)> = [
        ("PAYMENT_DEADLINE", payment),
        ("REVIEW_DEADLINE", review),
        ("DEADLINE_SCAN_INTERVAL", "200ms"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.push((
        "PAYMENT_INITIAL_CREDIT".to_owned(),
        INITIAL_CREDIT.to_owned(),
    ));
    Pipeline::start_with(Options {
        env,
        ..Options::default()
    })
    .await
    .expect("the pipeline starts")
}

/// Waits until `durable` has nothing left to deliver and nothing unacknowledged, having delivered at
/// least `delivered` messages in all: the messages that could make it act were handled.
async fn wait_consumed(pipeline: &Pipeline, durable: &str, delivered: u64) {
    let js = pipeline.jetstream().await;
    eventually(
        Duration::from_secs(60),
        &format!("{durable} to handle its messages"),
        || {
            let js = js.clone();
            async move {
                let stream = js.get_stream("ORDERS").await.ok()?;
                let info = stream.consumer_info(durable).await.ok()?;
                (info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.ack_floor.consumer_sequence >= delivered)
                    .then_some(())
            }
        },
    )
    .await;
}

/// The balance of `customer`'s wallet, `None` when paymentworker never opened one.
async fn wallet(pipeline: &Pipeline, customer: &str) -> Option<Decimal> {
    let pool = sqlx::PgPool::connect(&pipeline.database_url("paymentsdb"))
        .await
        .expect("paymentsdb");
    let balance = sqlx::query_scalar("SELECT balance FROM wallets WHERE customer_id = $1")
        .bind(customer)
        .fetch_optional(&pool)
        .await
        .expect("wallets readable");
    pool.close().await;
    balance
}

/// paymentsdb's record of an order: its status (`debited`, `refunded`, `failed`, `voided`).
async fn payment_status(pipeline: &Pipeline, order_id: &str) -> Option<String> {
    let pool = sqlx::PgPool::connect(&pipeline.database_url("paymentsdb"))
        .await
        .expect("paymentsdb");
    let order_id: uuid::Uuid = order_id.parse().expect("an order id");
    let status = sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&pool)
        .await
        .expect("payments readable");
    pool.close().await;
    status
}

/// The stored history of an order: (type, data) in version order, through the API.
async fn history(pipeline: &Pipeline, order_id: &str) -> Vec<(String, Value)> {
    pipeline
        .events(order_id)
        .await
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().expect("event_type").to_owned(),
                e["data"].clone(),
            )
        })
        .collect()
}

fn types(history: &[(String, Value)]) -> Vec<&str> {
    history.iter().map(|(t, _)| t.as_str()).collect()
}

/// How many times `text` is in process `index` of `service`'s log.
fn log_count(pipeline: &Pipeline, service: &str, index: usize, text: &str) -> usize {
    pipeline.log(service, index).matches(text).count()
}

fn money(text: &str) -> Decimal {
    text.parse().expect("an amount")
}

#[tokio::test]
async fn a_review_that_does_not_come_ends_cancelled_and_refunded_in_the_orders_trace() {
    let zipkin = Zipkin::start().expect("Zipkin receiver");
    let endpoint = zipkin.endpoint();
    let mut pipeline = start(
        "3s",
        "2s",
        &[
            ("ZIPKIN_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    pipeline.signal("reviewworker", 0, "STOP");

    let order_id = pipeline.place("late-review", "12.50", 2).await;

    // Expected: debited, then after 2 s without a review cancelled by the watcher for its review,
    // then refunded by paymentworker, as after a customer's cancel.
    let order = pipeline.wait_final(&order_id).await;
    assert_eq!(order["status"], "Cancelled", "{order}");
    assert_eq!(order["refunded"], true, "{order}");
    let reason = "review not completed within the 2s review deadline";
    assert_eq!(order["reason"], reason, "the read model says why: {order}");
    let stored = history(&pipeline, &order_id).await;
    assert_eq!(
        types(&stored),
        ["created", "paymentdebited", "cancelled", "paymentrefunded"]
    );
    assert_eq!(stored[2].1["reason"], reason, "the history says why");
    assert_eq!(
        wallet(&pipeline, "late-review").await,
        Some(money(INITIAL_CREDIT))
    );

    // Expected: reviewworker, thawed, handles the debit it was holding, finds the order moved on
    // and appends nothing.
    pipeline.signal("reviewworker", 0, "CONT");
    wait_consumed(&pipeline, "reviewworker", 1).await;
    assert!(
        pipeline
            .log("reviewworker", 0)
            .contains("the order moved on before the review"),
        "{}",
        pipeline.log("reviewworker", 0)
    );
    assert_eq!(history(&pipeline, &order_id).await.len(), 4, "no review");

    // Expected: the watcher's cancel is a span of the order's trace, a child of the span that
    // appended the debit, and the refund that follows continues the trace. Each service exports
    // its spans on its own schedule, so a child can arrive before its parent: the trace counts
    // once every parent is there.
    let trace_id = order["trace_id"].as_str().expect("trace_id").to_owned();
    let spans = eventually(
        Duration::from_secs(30),
        "the deadline span and the refund in the order's trace, with one root",
        || {
            let spans = zipkin.trace(&trace_id);
            async move {
                let has = |service: &str, name: &str| {
                    spans.iter().any(|s| {
                        s["localEndpoint"]["serviceName"] == service
                            && s["name"].as_str().is_some_and(|n| n.contains(name))
                    })
                };
                (has("deadlinewatcher", "review deadline")
                    && spans
                        .iter()
                        .filter(|s| s["localEndpoint"]["serviceName"] == "paymentworker")
                        .count()
                        >= 2
                    && roots(&spans) == 1)
                    .then_some(spans)
            }
        },
    )
    .await;
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .filter_map(|s| Some((s["id"].as_str()?, s)))
        .collect();
    let cancel = spans
        .iter()
        .find(|s| s["name"] == "review deadline")
        .expect("the deadline span");
    let parent = cancel["parentId"]
        .as_str()
        .and_then(|id| by_id.get(id))
        .unwrap_or_else(|| panic!("the deadline span's parent is in the trace: {cancel}"));
    assert_eq!(
        parent["localEndpoint"]["serviceName"], "paymentworker",
        "the span that appended the debit: {parent}"
    );
    assert_eq!(cancel["tags"]["deadline.step"], "review", "{cancel}");
    assert_eq!(roots(&spans), 1, "one root, no orphans");
}

/// Spans whose parent is not in the trace: the root, and any orphan.
fn roots(spans: &[Value]) -> usize {
    let ids: std::collections::HashSet<&str> =
        spans.iter().filter_map(|s| s["id"].as_str()).collect();
    spans
        .iter()
        .filter(|s| {
            s["parentId"]
                .as_str()
                .is_none_or(|parent| !ids.contains(parent))
        })
        .count()
}

#[tokio::test]
async fn a_payment_that_does_not_come_is_cancelled_once_however_many_watchers_restart_and_no_debit_follows()
 {
    // The watchers' sweeps at debug level: each says how many candidates it found.
    let mut pipeline = start("2s", "3s", &[("RUST_LOG", "info,deadlinewatcher=debug")]).await;
    pipeline.signal("paymentworker", 0, "STOP");

    // Expected: after 2 s without a payment the order is cancelled for its payment.
    let first = pipeline.place("late-payment", "12.50", 2).await;
    let order = pipeline.wait_final(&first).await;
    assert_eq!(order["status"], "Cancelled", "{order}");
    assert_eq!(
        order["reason"],
        "payment not received within the 2s payment deadline"
    );

    // A second watcher next to the first; then both are killed before the next order's deadline
    // and started again after it.
    pipeline.spawn("deadlinewatcher");
    eventually(Duration::from_secs(30), "the second watcher", || {
        let started = log_count(&pipeline, "deadlinewatcher", 1, "deadlinewatcher watching") > 0;
        async move { started.then_some(()) }
    })
    .await;
    let second = pipeline.place("late-payment-2", "12.50", 2).await;
    pipeline
        .wait_for(&second, "Pending in the read model", |o| {
            o["status"] == "Pending"
        })
        .await;
    pipeline.kill("deadlinewatcher", 0);
    pipeline.kill("deadlinewatcher", 1);
    let placed = Instant::now();
    // No watcher runs while the deadline falls.
    tokio::time::sleep_until(placed + Duration::from_secs(3)).await;
    assert_eq!(
        types(&history(&pipeline, &second).await),
        ["created"],
        "nothing cancels while no watcher runs"
    );

    // Expected: the operator sees it with `orderctl deadlines` (the read model, the same deadlines).
    let env = pipeline.env();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary("orderctl"))
            .args(["deadlines", "--within", "0s"])
            .envs(env)
            .output()
            .expect("orderctl runs")
    })
    .await
    .expect("orderctl finished");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "orderctl deadlines: {listed}");
    let line = listed
        .lines()
        .find(|line| line.starts_with(second.as_str()))
        .unwrap_or_else(|| panic!("the overdue order is listed:\n{listed}"));
    assert!(
        line.contains("Pending") && line.contains("payment") && line.contains("overdue by"),
        "{line}"
    );
    // Both at once, so that they race for the order on their first sweeps.
    let before: Vec<usize> = [0, 1]
        .iter()
        .map(|index| {
            log_count(
                &pipeline,
                "deadlinewatcher",
                *index,
                "deadlinewatcher watching",
            )
        })
        .collect();
    pipeline.restart("deadlinewatcher", 0);
    pipeline.restart("deadlinewatcher", 1);

    // Expected: the restarted watchers find the overdue order and it is cancelled exactly once:
    // once the read model shows it Cancelled, each watcher has swept again and found nothing
    // overdue, so neither has a cancel left to append.
    let order = pipeline.wait_final(&second).await;
    assert_eq!(order["status"], "Cancelled", "{order}");
    for index in [0, 1] {
        let mark = pipeline.log("deadlinewatcher", index).len();
        eventually(
            Duration::from_secs(30),
            "each watcher to sweep clean",
            || {
                let log = pipeline.log("deadlinewatcher", index);
                let clean = log.matches("deadlinewatcher watching").count() > before[index]
                    && log
                        .get(mark..)
                        .is_some_and(|after| after.contains("candidates: 0"));
                async move { clean.then_some(()) }
            },
        )
        .await;
    }
    let appended: usize = [0, 1]
        .iter()
        .map(|index| log_count(&pipeline, "deadlinewatcher", *index, "order cancelled"))
        .sum();
    assert!(appended >= 2, "the watchers logged both cancels");
    assert_eq!(
        types(&history(&pipeline, &second).await),
        ["created", "cancelled"],
        "one cancel"
    );

    // Expected: paymentworker, thawed, pays both orders from its backlog, loses both races to the
    // cancels, voids what it took and appends no debit: the wallets are whole.
    pipeline.signal("paymentworker", 0, "CONT");
    wait_consumed(&pipeline, "paymentworker", 4).await;
    for (order_id, customer) in [(&first, "late-payment"), (&second, "late-payment-2")] {
        assert_eq!(
            types(&history(&pipeline, order_id).await),
            ["created", "cancelled"],
            "no debit for {order_id}"
        );
        let balance = wallet(&pipeline, customer).await;
        assert!(
            balance.is_none_or(|balance| balance == money(INITIAL_CREDIT)),
            "{customer}'s wallet is whole: {balance:?}"
        );
        let payment = payment_status(&pipeline, order_id).await;
        assert!(
            payment.as_deref().is_none_or(|status| status == "voided"),
            "the late payment of {order_id} was voided: {payment:?}"
        );
    }
}

#[tokio::test]
async fn a_debit_just_before_the_deadline_wins_and_a_deadline_during_an_event_store_outage_is_kept()
{
    let mut pipeline = start("3s", "60s", &[]).await;

    // A debit that lands about a second before the payment deadline, while the read model is
    // frozen at `created`: past the deadline the watcher sees an overdue Pending order.
    pipeline.signal("paymentworker", 0, "STOP");
    pipeline.signal("reviewworker", 0, "STOP");
    let placed = Instant::now();
    let paid = pipeline.place("just-in-time", "12.50", 2).await;
    pipeline
        .wait_for(&paid, "Pending in the read model", |o| {
            o["status"] == "Pending"
        })
        .await;
    pipeline.signal("querymodelworker", 0, "STOP");
    tokio::time::sleep_until(placed + Duration::from_millis(1500)).await;
    pipeline.signal("paymentworker", 0, "CONT");
    let (shared, id) = (&pipeline, paid.as_str());
    eventually(Duration::from_secs(30), "the debit", move || async move {
        let history = history(shared, id).await;
        (types(&history) == ["created", "paymentdebited"]).then_some(())
    })
    .await;
    assert!(
        placed.elapsed() < Duration::from_secs(3),
        "the debit landed before the deadline (else this test proves nothing)"
    );

    // Expected: the watcher reads the order, finds it Paid (the review has its 60 s) and leaves it.
    let decided = format!("order.id={paid}");
    eventually(
        Duration::from_secs(30),
        "the watcher to decide on it",
        || {
            let log = pipeline.log("deadlinewatcher", 0);
            let seen = log
                .lines()
                .any(|line| line.contains("not due") && line.contains(&decided));
            async move { seen.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        types(&history(&pipeline, &paid).await),
        ["created", "paymentdebited"]
    );
    pipeline.signal("reviewworker", 0, "CONT");
    pipeline.signal("querymodelworker", 0, "CONT");
    let order = pipeline.wait_final(&paid).await;
    assert_eq!(order["status"], "Approved", "the order went on: {order}");

    // The event store goes down before the next order's payment deadline.
    pipeline.signal("paymentworker", 0, "STOP");
    let late = pipeline.place("store-down", "12.50", 2).await;
    pipeline
        .wait_for(&late, "Pending in the read model", |o| {
            o["status"] == "Pending"
        })
        .await;
    let warned = "overdue orders could not all be decided";
    let before = log_count(&pipeline, "deadlinewatcher", 0, warned);
    pipeline.kill("eventstore", 0);

    // Expected: the watcher tries when the deadline falls, cannot reach the event store, says so,
    // keeps trying, and cancels the order once the event store is back.
    eventually(
        Duration::from_secs(30),
        "the watcher to meet the outage",
        || {
            let met = log_count(&pipeline, "deadlinewatcher", 0, warned) > before;
            async move { met.then_some(()) }
        },
    )
    .await;
    let (status, order) = pipeline.get_order(&late).await;
    assert_eq!(
        (status, order["status"].as_str()),
        (200, Some("Pending")),
        "{order}"
    );
    pipeline.restart("eventstore", 0);
    let order = pipeline.wait_final(&late).await;
    assert_eq!(order["status"], "Cancelled", "{order}");
    assert_eq!(
        order["reason"],
        "payment not received within the 3s payment deadline"
    );
    assert!(
        pipeline
            .log("deadlinewatcher", 0)
            .contains("sweeps succeed again"),
        "{}",
        pipeline.log("deadlinewatcher", 0)
    );
    pipeline.signal("paymentworker", 0, "CONT");
    wait_consumed(&pipeline, "paymentworker", 1).await;
    assert_eq!(
        types(&history(&pipeline, &late).await),
        ["created", "cancelled"]
    );
}
