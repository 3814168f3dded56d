//! Overload: requests above `ORDERSVC_MAX_IN_FLIGHT` are refused at once with 503 and
//! `Retry-After` and write nothing; an event store that cannot commit in time is a 503 within the
//! timeout, never a 500 or a hang.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use ordersvc::{AppState, RETRY_AFTER_SECS, openapi_document, router};
use pipeline_harness::ORDERS;
use pipeline_runtime::eventstore::NewEvent;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::task::JoinSet;

use crate::harness::{Answer, REFERENCE_BODY, Stack, call, get, post_with_key};

/// ordersvc on the stack's event store and ordersdb, with its own bound of requests in flight.
fn limited(stack: &Stack, max_in_flight: u32, timeout_ms: u64) -> Router {
    let mut config = crate::harness::config(&stack.eventstore_url, stack.database_url(ORDERS));
    config.timeout_ms = timeout_ms;
    config.max_in_flight = max_in_flight;
    router(AppState::new(&config).expect("ordersvc state"))
}

/// Holds an EXCLUSIVE lock on eventstoredb's `events`: reads go on, every append's INSERT waits,
/// so requests that reached the event store stay in flight until [`Stall::release`].
struct Stall(Transaction<'static, Postgres>);

impl Stall {
    async fn start(db: &PgPool) -> Stall {
        let mut tx = db.begin().await.expect("begin");
        sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .expect("lock events");
        Stall(tx)
    }

    async fn release(self) {
        self.0.rollback().await.expect("release the lock");
    }
}

fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

/// A POST of the reference order under `key`, answered with the key and how long it took.
fn post(tasks: &mut JoinSet<(String, Duration, Answer)>, app: &Router, key: String) {
    let app = app.clone();
    tasks.spawn(async move {
        let started = Instant::now();
        let answer = call(app, post_with_key("/api/orders", &key, REFERENCE_BODY)).await;
        (key, started.elapsed(), answer)
    });
}

async fn next(
    tasks: &mut JoinSet<(String, Duration, Answer)>,
) -> Option<(String, Duration, Answer)> {
    let joined = tokio::time::timeout(Duration::from_secs(20), tasks.join_next())
        .await
        .expect("every request is answered within 20 s");
    joined.map(|done| done.expect("the request task does not panic"))
}

fn assert_refused(key: &str, answer: &Answer) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{key}: {}",
        answer.body
    );
    assert_eq!(
        answer.headers[header::RETRY_AFTER],
        RETRY_AFTER_SECS.to_string().as_str(),
        "{key}: a 503 says when to come back"
    );
    assert!(
        answer.body["error"].is_string(),
        "{key}: JSON error body, got {}",
        answer.body
    );
}

/// The ids of the orders the event store holds a `created` event of.
async fn stored_orders(stack: &Stack) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>("SELECT aggregate_id FROM events WHERE event_type = 'created'")
        .fetch_all(&stack.eventstore_db)
        .await
        .expect("stored orders")
        .into_iter()
        .collect()
}

/// Appends an order's `created` event straight to the event store, retrying while its queue is
/// still full, and returns the order's id once it is stored: with one batch worker taking the
/// queue in order, every append queued before it has then been committed or dropped.
async fn append_behind_the_queue(stack: &Stack) -> String {
    let order_id = uuid::Uuid::new_v4().to_string();
    let event = NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "created".to_owned(),
        aggregate_id: order_id.clone(),
        aggregate_type: "order".to_owned(),
        data: serde_json::json!({ "order_id": order_id }),
        metadata: Default::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The same event id each time: a try that was queued after all is stored once.
        match stack.store.append(event.clone(), 0).await {
            Ok(_) => return order_id,
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the order behind the queue is appended: {err}"),
        }
    }
}

#[tokio::test]
async fn a_burst_above_the_limit_is_refused_with_503_and_retry_after_and_writes_nothing() {
    let stack = Stack::start().await;
    const LIMIT: usize = 4;
    const BURST: usize = 40;
    // A timeout longer than the test waits for any answer: a request admitted can only be
    // answered after the stall is released, never by giving up on the event store.
    let app = limited(&stack, u32::try_from(LIMIT).expect("small"), 120_000);

    // With appends stalled, the first LIMIT requests stay in flight: every other one must be
    // refused at once, not queued behind them. The order of the answers says which: all the
    // refusals come while the stall holds, before any admitted request can have finished.
    let stall = Stall::start(&stack.eventstore_db).await;
    let mut tasks = JoinSet::new();
    for i in 0..BURST {
        post(&mut tasks, &app, key("burst", i));
    }
    let mut refused = Vec::new();
    while refused.len() < BURST - LIMIT {
        let (key, _, answer) = next(&mut tasks).await.expect("more answers");
        assert_refused(&key, &answer);
        refused.push(key);
    }

    // Meanwhile the probes answer (they are exempt) and reads are refused like writes.
    let health = call(app.clone(), get("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    let ready = call(app.clone(), get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let read = call(app.clone(), get("/api/orders?customer_id=c1")).await;
    assert_refused("a read at the limit", &read);
    assert_eq!(
        stack.stored_events().await,
        0,
        "nothing committed while stalled"
    );

    stall.release().await;
    let mut accepted = BTreeSet::new();
    while let Some((key, _, answer)) = next(&mut tasks).await {
        assert_eq!(answer.status, StatusCode::CREATED, "{key}: {}", answer.body);
        let id = answer.body["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned();
        accepted.insert(id);
    }
    assert_eq!(accepted.len(), LIMIT, "the requests in flight were placed");
    assert_eq!(
        stored_orders(&stack).await,
        accepted,
        "the event store holds exactly the accepted orders: no refused request wrote anything"
    );
    assert_eq!(stack.stored_events().await, LIMIT as i64);

    // The refused requests, retried with their keys once the burst is over, all succeed.
    for key in &refused {
        let answer = call(
            app.clone(),
            post_with_key("/api/orders", key, REFERENCE_BODY),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{key}: {}", answer.body);
        let id = answer.body["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned();
        assert!(accepted.insert(id), "{key} is a new order");
    }
    assert_eq!(stored_orders(&stack).await, accepted);
    assert_eq!(stack.stored_events().await, BURST as i64);
    eprintln!(
        "burst of {BURST} at a limit of {LIMIT}: {LIMIT} placed, {} refused at once, all placed on retry",
        refused.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_store_with_a_full_append_queue_is_a_503_within_the_timeout_and_retries_succeed() {
    let stack = Stack::start().await;
    // More than the event store takes in one batch (256) plus its queue (1024): with commits
    // stalled, the batch waits on the lock, the queue fills, and later appends are refused at once
    // (RESOURCE_EXHAUSTED → 503); the queued ones are 503 when the client's deadline passes.
    const BURST: usize = 1400;
    const TIMEOUT: Duration = Duration::from_millis(2000);
    let timeout_ms = u64::try_from(TIMEOUT.as_millis()).expect("small");
    let app = limited(&stack, 10_000, timeout_ms);

    let stall = Stall::start(&stack.eventstore_db).await;
    let mut tasks = JoinSet::new();
    for i in 0..BURST {
        post(&mut tasks, &app, key("full", i));
    }
    // Every request is answered 503 while the stall still holds: the answers cannot have waited
    // for a commit, so they came from the full queue or the client's timeout, not a hang.
    let mut slowest = Duration::ZERO;
    let mut refused = Vec::new();
    while let Some((key, took, answer)) = next(&mut tasks).await {
        assert_refused(&key, &answer);
        slowest = slowest.max(took);
        refused.push(key);
    }
    assert_eq!(
        refused.len(),
        BURST,
        "every request answered before the release"
    );
    stall.release().await;

    // Only the batch already taken when the stall began may commit after its callers gave up;
    // queued appends whose caller left are dropped. The 503 said "retry", and the retry with the
    // same key answers the order either way, once. Once an order appended now, behind every one of
    // them, is stored, each queued append has been committed or dropped: the count is final.
    let sentinel = append_behind_the_queue(&stack).await;
    let written_anyway = stack.stored_events().await - 1;
    assert!(
        written_anyway <= 256,
        "at most the one batch in flight commits after its callers gave up, not {written_anyway}"
    );
    let mut placed = BTreeSet::new();
    let retry = limited(&stack, 64, 5000);
    for chunk in refused.chunks(64) {
        let mut tasks = JoinSet::new();
        for key in chunk {
            post(&mut tasks, &retry, key.clone());
        }
        while let Some((key, _, answer)) = next(&mut tasks).await {
            assert_eq!(answer.status, StatusCode::CREATED, "{key}: {}", answer.body);
            placed.insert(
                answer.body["order_id"]
                    .as_str()
                    .expect("order_id")
                    .to_owned(),
            );
        }
    }
    assert_eq!(placed.len(), BURST, "one order per key");
    placed.insert(sentinel);
    assert_eq!(stored_orders(&stack).await, placed);
    assert_eq!(
        stack.stored_events().await,
        BURST as i64 + 1,
        "no order twice"
    );
    eprintln!(
        "{BURST} appends against a stalled event store: all 503 within {slowest:?}; \
         {written_anyway} were in the stalled batch and committed after it; all placed once on retry"
    );
}

#[tokio::test]
async fn every_operation_but_the_probes_documents_and_answers_the_overload_503() {
    let stack = Stack::start().await;
    let app = limited(&stack, 1, 5000);
    let stall = Stall::start(&stack.eventstore_db).await;
    let mut holder = JoinSet::new();
    post(&mut holder, &app, "holder".to_owned());
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(app.clone(), get("/api/openapi.json")).await.status
        != StatusCode::SERVICE_UNAVAILABLE
    {
        assert!(
            Instant::now() < deadline,
            "the holder never took the one permit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let document = openapi_document();
    let id = uuid::Uuid::new_v4();
    let paths = document["paths"].as_object().expect("paths");
    let operations = paths.iter().flat_map(|(path, methods)| {
        let methods = methods.as_object().expect("methods");
        methods
            .iter()
            .map(move |(method, operation)| (path, method, operation))
    });
    for (path, method, operation) in operations {
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let operation_id = operation["operationId"].as_str().expect("operationId");
        let path_with_id = path.replace("{id}", &id.to_string());
        let uri = if operation_id == "listOrders" {
            format!("{path_with_id}?customer_id=c1")
        } else {
            path_with_id
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(if method == Method::POST {
                REFERENCE_BODY
            } else {
                ""
            }))
            .expect("request");
        let answer = call(app.clone(), request).await;
        let documented = &operation["responses"]["503"];
        let name = format!("{method} {path}");
        if matches!(operation_id, "health" | "ready") {
            assert_eq!(answer.status, StatusCode::OK, "{name} is exempt");
        } else {
            assert_refused(&name, &answer);
            assert!(
                documented["headers"]["Retry-After"].is_object(),
                "{name} documents its 503 with Retry-After: {documented}"
            );
        }
    }

    stall.release().await;
    let (_, _, answer) = next(&mut holder).await.expect("the holder's answer");
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let answer = call(app.clone(), get("/api/openapi.json")).await;
    assert_eq!(answer.status, StatusCode::OK, "the permit came back");
}
