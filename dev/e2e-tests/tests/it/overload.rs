//! Overload on the real binaries: a burst of POSTs far above what the pipeline carries is answered
//! (201, or 503 with `Retry-After`), nothing accepted is lost, nothing refused is half-written, and
//! the pipeline drains and serves normally again without a restart.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::pipeline::SERVICES;
use e2e_tests::{Options, Pipeline, order_body};
use reqwest::StatusCode;
use serde_json::Value;
use testkit::jetstream::wait_consumer_idle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The workers, each with its durable consumer of the same name.
const WORKERS: [&str; 3] = ["paymentworker", "reviewworker", "querymodelworker"];

/// POSTs sent at once.
const BURST: usize = 1000;
/// ordersvc's bound of requests in flight, half its default: low enough that a burst of 1,000 is
/// refused in part on any machine, so the refusal path is exercised through the real binary.
const MAX_IN_FLIGHT: &str = "128";
/// Requests the retrying client keeps open at once, below the bound.
const RETRY_CONCURRENCY: usize = 100;

/// One POST's outcome.
struct Answer {
    key: String,
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

fn key(i: usize) -> String {
    format!("burst-{i}")
}

/// POSTs order `i` (its own customer, so every wallet has the funds) under its Idempotency-Key.
async fn post(client: reqwest::Client, base: String, i: usize) -> Result<Answer, String> {
    let started = Instant::now();
    let key = key(i);
    let response = client
        .post(format!("{base}/api/orders"))
        .header("Idempotency-Key", &key)
        .json(&order_body(&format!("burst-customer-{i}"), "10.00", 1))
        .send()
        .await
        .map_err(|err| format!("{key}: no answer: {err:?}"))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .json()
        .await
        .map_err(|err| format!("{key}: {status} without a JSON body: {err}"))?;
    Ok(Answer {
        key,
        status,
        retry_after,
        body,
        took: started.elapsed(),
    })
}

fn order_id(answer: &Answer) -> String {
    answer.body["order_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: 201 without order_id: {}", answer.key, answer.body))
        .to_owned()
}

/// Orders of `ids` the read model shows in a final state; `None` when the read lost a
/// serialization race to the projection (the test PostgreSQL runs SERIALIZABLE): ask again.
async fn final_count(db: &sqlx::PgPool, ids: &BTreeSet<String>) -> Option<usize> {
    let ids: Vec<uuid::Uuid> = ids.iter().filter_map(|id| id.parse().ok()).collect();
    let counted = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM orders WHERE order_id = ANY($1) \
         AND status IN ('Approved', 'PaymentFailed', 'Rejected', 'Cancelled')",
    )
    .bind(&ids)
    .fetch_one(db)
    .await;
    match counted {
        Ok(n) => usize::try_from(n).ok(),
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("40001") => None,
        Err(err) => panic!("counting final orders: {err}"),
    }
}

/// Waits until every order of `ids` is final; returns how long it took.
async fn drain(pipeline: &Pipeline, db: &sqlx::PgPool, ids: &BTreeSet<String>) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    loop {
        let done = final_count(db, ids).await;
        if done == Some(ids.len()) {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {done:?} of {} orders final after 180 s\n{}",
            ids.len(),
            SERVICES
                .iter()
                .map(|s| format!("--- {s}\n{}", tail(&pipeline.log(s, 0))))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Median and maximum, for the report.
fn spread(took: &mut [Duration]) -> String {
    took.sort();
    match (took.get(took.len() / 2), took.last()) {
        (Some(median), Some(max)) => format!("answer p50 {median:?}, max {max:?}"),
        _ => "none".to_owned(),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_far_above_capacity_is_answered_and_every_accepted_order_completes() {
    let mut pipeline = Pipeline::start_with(Options {
        env: vec![(
            "ORDERSVC_MAX_IN_FLIGHT".to_owned(),
            MAX_IN_FLIGHT.to_owned(),
        )],
        ..Options::default()
    })
    .await
    .expect("the pipeline starts");
    let base = pipeline.base_url();
    // Its own client: one connection per request in flight, and patience for a slow answer, so a
    // slow answer is measured rather than counted as lost.
    let client = reqwest::Client::builder()
        .default_headers(pipeline.operator_headers())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let orders_db = sqlx::PgPool::connect(&pipeline.database_url("ordersdb"))
        .await
        .expect("ordersdb");

    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..BURST {
        tasks.spawn(post(client.clone(), base.clone(), i));
    }
    let mut accepted = BTreeSet::new();
    let mut refused = Vec::new();
    let (mut took_accepted, mut took_refused) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let answer = joined
            .expect("the POST task does not panic")
            .unwrap_or_else(|err| panic!("every request gets an answer: {err}"));
        match answer.status {
            StatusCode::CREATED => {
                took_accepted.push(answer.took);
                assert!(
                    accepted.insert(order_id(&answer)),
                    "{}: one order per key",
                    answer.key
                );
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                took_refused.push(answer.took);
                assert!(
                    answer.retry_after.is_some(),
                    "{}: a refusal says when to retry",
                    answer.key
                );
                assert!(answer.body["error"].is_string(), "{}", answer.body);
                refused.push(answer.key);
            }
            other => panic!(
                "{}: only 201, 503 or 429 under overload, got {other}: {}",
                answer.key, answer.body
            ),
        }
    }
    let burst_took = started.elapsed();
    eprintln!(
        "burst of {BURST} at ORDERSVC_MAX_IN_FLIGHT={MAX_IN_FLIGHT}: {} accepted ({}), {} refused \
         ({}), all answered within {burst_took:?}",
        accepted.len(),
        spread(&mut took_accepted),
        refused.len(),
        spread(&mut took_refused)
    );
    assert!(
        !refused.is_empty(),
        "a burst of {BURST} at once is above {MAX_IN_FLIGHT} in flight"
    );
    assert!(
        pipeline
            .log("ordersvc", 0)
            .contains("overloaded: refusing requests"),
        "ordersvc says it is refusing requests"
    );
    // Every request was answered (a hang would have been the client's 60 s timeout, a failure
    // above); how fast is reported, not asserted: on two shared cores it says little.

    // An order placed right after the burst waits behind the accepted ones, but gets through.
    let right_after_started = Instant::now();
    let right_after = pipeline.place("right-after", "10.00", 1).await;

    let drained = drain(&pipeline, &orders_db, &accepted).await;
    eprintln!(
        "{} accepted orders final {drained:?} after the burst ({:.1} orders/s from its start)",
        accepted.len(),
        accepted.len() as f64 / (burst_took + drained).as_secs_f64()
    );
    let right_after = BTreeSet::from([right_after]);
    drain(&pipeline, &orders_db, &right_after).await;
    eprintln!(
        "the order placed right after the burst was final after {:?}",
        right_after_started.elapsed()
    );

    // The refused ones, retried with their keys as a client honouring Retry-After would.
    let retry_started = Instant::now();
    let mut retried = BTreeSet::new();
    let mut pending: Vec<usize> = refused
        .iter()
        .filter_map(|key| key.strip_prefix("burst-")?.parse().ok())
        .collect();
    for round in 1..=10 {
        if pending.is_empty() {
            break;
        }
        let mut again = Vec::new();
        // A client pool that keeps fewer requests open than the bound, all the time.
        let slots = Arc::new(Semaphore::new(RETRY_CONCURRENCY));
        let mut tasks = JoinSet::new();
        for &i in &pending {
            let (client, base, slots) = (client.clone(), base.clone(), Arc::clone(&slots));
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore open");
                post(client, base, i).await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let answer = joined
                .expect("no panic")
                .unwrap_or_else(|err| panic!("every retry gets an answer: {err}"));
            match answer.status {
                StatusCode::CREATED => {
                    let id = order_id(&answer);
                    assert!(
                        !accepted.contains(&id) && retried.insert(id),
                        "{}: a new order",
                        answer.key
                    );
                }
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                    again.push(answer.key);
                }
                other => panic!("{}: retry answered {other}: {}", answer.key, answer.body),
            }
        }
        pending = again
            .iter()
            .filter_map(|key| key.strip_prefix("burst-")?.parse().ok())
            .collect();
        if !pending.is_empty() {
            eprintln!("retry round {round}: {} refused again", pending.len());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert!(
        pending.is_empty(),
        "{} refused requests still refused after 10 rounds",
        pending.len()
    );
    let retry_drained = drain(&pipeline, &orders_db, &retried).await;
    eprintln!(
        "{} refused requests placed on retry in {:?}, final {retry_drained:?} later",
        retried.len(),
        retry_started.elapsed()
    );

    // Exactly one order per key, each with its whole saga and nothing else.
    let mut all: BTreeSet<String> = accepted.union(&retried).cloned().collect();
    all.extend(right_after);
    assert_eq!(
        accepted.len() + retried.len(),
        BURST,
        "every key placed once"
    );
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status")
            .fetch_all(&orders_db)
            .await
            .expect("statuses");
    assert_eq!(
        statuses,
        [(
            "Approved".to_owned(),
            i64::try_from(all.len()).expect("small")
        )],
        "every order approved, no other row in the read model"
    );
    assert_eq!(
        pipeline.count_events().await,
        3 * i64::try_from(all.len()).expect("small"),
        "created, paymentdebited, approved per order and nothing else"
    );

    // Recovered without a restart: once every worker's consumer is idle (the burst's backlog all
    // delivered and acknowledged), a new order goes through the whole saga and leaves them idle.
    let js = pipeline.jetstream().await;
    for worker in WORKERS {
        wait_consumer_idle(&js, "ORDERS", worker, 0, Duration::from_secs(60)).await;
    }
    let started = Instant::now();
    let id = pipeline.place("after-drain", "10.00", 1).await;
    let order = pipeline.wait_final(&id).await;
    assert_eq!(order["status"], "Approved", "{order}");
    eprintln!("an order after the drain: final in {:?}", started.elapsed());
    assert_eq!(
        pipeline.event_types(&id).await,
        ["created", "paymentdebited", "approved"],
        "the order after the drain has its saga and nothing else"
    );
    for worker in WORKERS {
        wait_consumer_idle(&js, "ORDERS", worker, 0, Duration::from_secs(60)).await;
    }
    for service in SERVICES {
        assert!(
            pipeline.is_running(service, 0),
            "{service} is still the process it was"
        );
    }
    orders_db.close().await;
}
