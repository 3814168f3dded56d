//! The pipeline on a three-node NATS cluster (the repository's `nats-cluster/` files) with the streams at
//! three replicas, under a steady load while each node in turn is SIGKILLed and started again: no
//! accepted order is lost, every event reaches the stream once, and the services reconnect by
//! themselves.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use e2e_tests::{Options, Pipeline, order_body};
use futures::StreamExt as _;
use testkit::NatsCluster;

/// Orders offered per second.
const RATE: u64 = 10;
/// Every node is killed this many times, one node at a time.
const ROUNDS: usize = 2;
/// How long a killed node stays down.
const DOWN: Duration = Duration::from_secs(4);
/// How long the cluster runs with all three nodes between two kills.
const RECOVER: Duration = Duration::from_secs(3);
/// How long one order's POST is retried (same Idempotency-Key) on a 5xx or a transport error.
const POST_DEADLINE: Duration = Duration::from_secs(20);
/// Every tenth order is above the review limit: Rejected, then refunded.
const BIG_EVERY: usize = 10;
/// The services that hold a NATS connection (ordersvc talks to the event store only).
const NATS_CLIENTS: [&str; 4] = [
    "eventstore",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
];

/// One POSTed order: its key, whether it must end Rejected, and how the POST ended.
struct Offered {
    key: String,
    big: bool,
    attempts: u32,
    outcome: Result<String, String>,
}

/// POSTs an order of `customer` under `key` (600.00 when `big`, else 10.00) until a 2xx (the order
/// id) or a 4xx, retrying 5xx answers and transport errors with the same key, for at most
/// [`POST_DEADLINE`].
async fn post_with_retries(
    http: reqwest::Client,
    url: String,
    key: String,
    customer: String,
    big: bool,
) -> Offered {
    let deadline = Instant::now() + POST_DEADLINE;
    let price = if big { "600.00" } else { "10.00" };
    let body = order_body(&customer, price, 1);
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        let answer = http
            .post(&url)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        let last = match answer {
            Ok(response) if response.status().is_success() => {
                let json: serde_json::Value = response.json().await.unwrap_or_default();
                match json["order_id"].as_str() {
                    Some(id) => break Ok(id.to_owned()),
                    None => format!("a 2xx without an order id: {json}"),
                }
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                break Err(format!(
                    "{status}: {}",
                    response.text().await.unwrap_or_default()
                ));
            }
            Ok(response) => format!("{}", response.status()),
            Err(error) => format!("{error}"),
        };
        if Instant::now() >= deadline {
            break Err(format!("no 2xx within {POST_DEADLINE:?}; last {last}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    Offered {
        key,
        big,
        attempts,
        outcome,
    }
}

/// Starts one POST every 1/[`RATE`] s, each in its own task (a slow answer does not slow the rate),
/// until `stop`; returns every order offered.
async fn offer_load(
    pipeline_url: String,
    http: reqwest::Client,
    stop: Arc<AtomicBool>,
) -> Vec<Offered> {
    let url = format!("{pipeline_url}/api/orders");
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut posts = Vec::new();
    let run = uuid::Uuid::new_v4();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let n = posts.len();
        let key = format!("cluster-{run}-{n}");
        // A big order has a customer of its own, so its debit never meets an empty wallet; the
        // others share 20 wallets, far from empty at 10.00 an order.
        let big = n % BIG_EVERY == BIG_EVERY - 1;
        let customer = if big {
            format!("big{n}")
        } else {
            format!("c{}", n % 20)
        };
        posts.push(tokio::spawn(post_with_retries(
            http.clone(),
            url.clone(),
            key,
            customer,
            big,
        )));
    }
    let mut offered = Vec::with_capacity(posts.len());
    for post in posts {
        offered.push(post.await.expect("a POST task panicked"));
    }
    offered
}

/// Node index (0..3) of `orders-nats-<n>` (n = 1..3), as the repository's files name them.
fn node_of(server_name: &str) -> Option<usize> {
    server_name
        .strip_prefix("orders-nats-")
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1))
}

async fn stream_info(js: &jetstream::Context, name: &str) -> Option<stream::Info> {
    let mut stream = js.get_stream(name).await.ok()?;
    stream.info().await.ok().cloned()
}

/// Seconds since midnight of a log line's leading RFC 3339 UTC timestamp.
fn seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let time = time.strip_suffix('Z').unwrap_or(time);
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// Each disconnection in `log` and how long until the next connection, in seconds (`None` when none
/// followed).
fn reconnections(log: &str) -> Vec<Option<f64>> {
    let mut gaps = Vec::new();
    let mut down_since: Option<f64> = None;
    for line in log.lines() {
        if line.contains("disconnected from NATS") {
            if down_since.is_none() {
                down_since = seconds_of_day(line);
                gaps.push(None);
            }
        } else if line.contains("connected to NATS")
            && let Some(since) = down_since.take()
            && let (Some(now), Some(gap)) = (seconds_of_day(line), gaps.last_mut())
        {
            *gap = Some((now - since).rem_euclid(86_400.0));
        }
    }
    gaps
}

/// The longest wait, in ms, of an event between its commit and its arrival on the stream (the
/// relay, waiting for a stream leader), and of the next event of an order between its cause's
/// arrival on the stream and its own commit (a worker, waiting for its consumer's leader).
async fn longest_delays(events_db: &sqlx::PgPool, published: &HashMap<String, i64>) -> (i64, i64) {
    let events: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT event_id::text, aggregate_id, aggregate_version, \
         (EXTRACT(EPOCH FROM created_at) * 1000)::INT8 FROM events",
    )
    .fetch_all(events_db)
    .await
    .expect("reading the events");
    let by_version: HashMap<(&str, i64), &str> = events
        .iter()
        .map(|(id, aggregate, version, _)| ((aggregate.as_str(), *version), id.as_str()))
        .collect();
    let mut relay = 0;
    let mut worker = 0;
    for (id, aggregate, version, committed) in &events {
        if let Some(on_stream) = published.get(id) {
            relay = relay.max(on_stream - committed);
        }
        if let Some(cause) = by_version.get(&(aggregate.as_str(), version - 1))
            && let Some(cause_on_stream) = published.get(*cause)
        {
            worker = worker.max(committed - cause_on_stream);
        }
    }
    (relay, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_order_is_lost_while_nats_nodes_are_killed_one_at_a_time() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../nats-cluster");
    let configs: Vec<PathBuf> = (1..=3)
        .map(|n| root.join(format!("node-{n}.conf")))
        .collect();
    let cluster = NatsCluster::start_with_configs(&configs).expect("the cluster starts");
    let mut pipeline = Pipeline::start_with(Options {
        nats_cluster: Some(cluster),
        bootstrap_args: vec!["--replicas".to_owned(), "3".to_owned()],
        ..Options::default()
    })
    .await
    .expect("the pipeline starts");
    let js = pipeline.jetstream().await;
    for name in ["ORDERS", "DEADLETTERS"] {
        let info = stream_info(&js, name).await.expect("the stream exists");
        assert_eq!(
            info.config.num_replicas, 3,
            "{name} is bootstrapped at 3 replicas"
        );
        let replicas = info.cluster.map(|c| c.replicas.len()).unwrap_or_default();
        assert_eq!(replicas, 2, "{name} has a leader and two replicas");
    }
    // The durable consumers take the stream's replica count.
    let orders = js.get_stream("ORDERS").await.expect("ORDERS");
    for durable in ["paymentworker", "reviewworker", "querymodelworker"] {
        let info = orders
            .consumer_info(durable)
            .await
            .expect("the consumer exists");
        let replicas = info.cluster.map(|c| c.replicas.len()).unwrap_or_default();
        assert_eq!(
            replicas, 2,
            "consumer {durable} has a leader and two replicas"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(offer_load(
        pipeline.base_url(),
        pipeline.http.clone(),
        Arc::clone(&stop),
    ));

    // Each node in turn: SIGKILL, down for a while, started again (start_again waits until its
    // copies caught up), then the whole cluster runs for a while before the next kill.
    let began = Instant::now();
    let mut kills = Vec::new();
    for round in 0..ROUNDS {
        for node in 0..3 {
            let leader = stream_info(&js, "ORDERS")
                .await
                .and_then(|info| info.cluster)
                .and_then(|cluster| cluster.leader);
            let cluster = pipeline
                .nats_cluster
                .as_mut()
                .expect("the pipeline's cluster");
            let meta_leader = cluster.meta_leader();
            cluster.kill(node).expect("killing a node");
            tokio::time::sleep(DOWN).await;
            let restarted = Instant::now();
            let cluster = pipeline
                .nats_cluster
                .as_mut()
                .expect("the pipeline's cluster");
            tokio::task::block_in_place(|| cluster.start_again(node))
                .unwrap_or_else(|error| panic!("node {node} did not come back: {error:#}"));
            let catch_up = restarted.elapsed();
            eprintln!(
                "round {round}: killed node {node} (ORDERS leader {leader:?}, meta leader {meta_leader:?}), \
                 back and current {:.1} s after its restart",
                catch_up.as_secs_f64()
            );
            kills.push((node, leader, meta_leader, catch_up));
            tokio::time::sleep(RECOVER).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let offered = load.await.expect("the load task");
    let chaos = began.elapsed();

    let accepted: Vec<&Offered> = offered.iter().filter(|o| o.outcome.is_ok()).collect();
    let refused: Vec<String> = offered
        .iter()
        .filter_map(|o| o.outcome.as_ref().err().map(|e| format!("{}: {e}", o.key)))
        .collect();
    let retried = offered.iter().filter(|o| o.attempts > 1).count();
    assert!(
        offered.len() as u64 >= RATE * 40,
        "the load ran ({} orders offered)",
        offered.len()
    );
    // NATS is not on the POST path (ordersvc appends through the event store), so nothing is refused.
    assert!(refused.is_empty(), "refused orders: {refused:#?}");
    let stream_leader_kills = kills
        .iter()
        .filter(|(node, leader, _, _)| leader.as_deref().and_then(node_of) == Some(*node))
        .count();
    assert!(
        stream_leader_kills >= 1,
        "at least one kill hit the ORDERS leader: {kills:?}"
    );

    // Every accepted order reaches its final status: Approved, or Rejected and refunded.
    let ids: Vec<String> = accepted
        .iter()
        .filter_map(|o| o.outcome.as_ref().ok().cloned())
        .collect();
    let big: HashSet<&str> = accepted
        .iter()
        .filter(|o| o.big)
        .filter_map(|o| o.outcome.as_deref().ok())
        .collect();
    let orders_db = sqlx::PgPool::connect(&pipeline.database_url("ordersdb"))
        .await
        .expect("ordersdb");
    let drained = Instant::now();
    let deadline = drained + Duration::from_secs(90);
    let rows: Vec<(String, String, bool, i64)> = loop {
        let rows: Vec<(String, String, bool, i64)> = sqlx::query_as(
            "SELECT order_id::text, status, refunded, \
             (EXTRACT(EPOCH FROM (updated_at - created_on)) * 1000)::INT8 \
             FROM orders WHERE order_id = ANY($1::uuid[])",
        )
        .bind(&ids)
        .fetch_all(&orders_db)
        .await
        .expect("reading the read model");
        let done = rows.len() == ids.len()
            && rows.iter().all(|(id, status, refunded, _)| {
                if big.contains(id.as_str()) {
                    status == "Rejected" && *refunded
                } else {
                    status == "Approved"
                }
            });
        if done {
            break rows;
        }
        if Instant::now() >= deadline {
            let known: HashMap<&str, (&str, bool)> = rows
                .iter()
                .map(|(id, s, r, _)| (id.as_str(), (s.as_str(), *r)))
                .collect();
            let stuck: Vec<String> = ids
                .iter()
                .filter_map(|id| {
                    let state = known.get(id.as_str());
                    let expected_big = big.contains(id.as_str());
                    let ok = match state {
                        Some((status, refunded)) if expected_big => {
                            *status == "Rejected" && *refunded
                        }
                        Some((status, _)) => *status == "Approved",
                        None => false,
                    };
                    (!ok).then(|| format!("{id}: {state:?} (big: {expected_big})"))
                })
                .collect();
            panic!(
                "{} of {} accepted orders are not final 90 s after the load: {:#?}",
                stuck.len(),
                ids.len(),
                &stuck[..stuck.len().min(20)]
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let settled = drained.elapsed();
    // Milliseconds, kept exactly (hdrhistogram's three digits are exact below 2,048).
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("three significant digits");
    for row in &rows {
        let ms = u64::try_from(row.3).unwrap_or(0);
        if latencies.record(ms).is_err() {
            latencies.saturating_record(ms);
        }
    }

    // The event store and the stream agree: every event once on ORDERS, nothing left in the outbox,
    // nothing dead-lettered.
    let events_db = sqlx::PgPool::connect(&pipeline.database_url("eventstoredb"))
        .await
        .expect("eventstoredb");
    let mut outbox = i64::MAX;
    let outbox_deadline = Instant::now() + Duration::from_secs(30);
    while outbox > 0 && Instant::now() < outbox_deadline {
        outbox = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&events_db)
            .await
            .expect("counting the outbox");
        if outbox > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(outbox, 0, "the outbox is empty");
    let event_ids: HashSet<String> = sqlx::query_scalar("SELECT event_id::text FROM events")
        .fetch_all(&events_db)
        .await
        .expect("reading event ids")
        .into_iter()
        .collect();
    assert_eq!(
        event_ids.len(),
        3 * (ids.len() - big.len()) + 4 * big.len(),
        "3 events per approved order, 4 per rejected and refunded one"
    );

    let orders = stream_info(&js, "ORDERS").await.expect("ORDERS answers");
    let on_stream = usize::try_from(orders.state.messages).expect("a message count");
    let ordered = js
        .get_stream("ORDERS")
        .await
        .expect("ORDERS")
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = ordered.messages().await.expect("reading ORDERS");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut published: HashMap<String, i64> = HashMap::new();
    let read_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for _ in 0..on_stream {
        let message = tokio::time::timeout_at(read_deadline, messages.next())
            .await
            .expect("ORDERS read within 60 s")
            .expect("the ordered consumer goes on")
            .expect("a message");
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|id| id.as_str().to_owned())
            .expect("every message has a Nats-Msg-Id");
        if let Ok(info) = message.info() {
            let millis = info.published.unix_timestamp_nanos() / 1_000_000;
            published.insert(id.clone(), i64::try_from(millis).unwrap_or(i64::MAX));
        }
        *seen.entry(id).or_default() += 1;
    }
    let (relay_worst, worker_worst) = longest_delays(&events_db, &published).await;
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "events on the stream more than once: {twice:?}"
    );
    let seen_ids: HashSet<String> = seen.keys().cloned().collect();
    let missing: Vec<&String> = event_ids.difference(&seen_ids).collect();
    assert!(missing.is_empty(), "events never published: {missing:?}");
    assert_eq!(
        on_stream,
        event_ids.len(),
        "the stream holds exactly the events"
    );
    let dead = stream_info(&js, "DEADLETTERS")
        .await
        .expect("DEADLETTERS answers");
    assert_eq!(dead.state.messages, 0, "nothing was dead-lettered");

    // No service died: each one rode out the kills and reconnected by itself.
    for service in e2e_tests::pipeline::SERVICES {
        assert!(
            pipeline.is_running(service, 0),
            "{service} is still running\n{}",
            pipeline.log(service, 0)
        );
    }
    let mut gaps = Vec::new();
    let mut per_service = Vec::new();
    for service in NATS_CLIENTS {
        let log = pipeline.log(service, 0);
        let reconnects = reconnections(&log);
        assert!(
            !reconnects.is_empty(),
            "{service} lost its node at least once (it was connected to one of the killed nodes)\n{log}"
        );
        assert!(
            reconnects.iter().all(Option::is_some),
            "{service} reconnected after every disconnection: {reconnects:?}\n{log}"
        );
        per_service.push(format!("{service} {}", reconnects.len()));
        gaps.extend(reconnects.into_iter().flatten());
    }
    let worst = gaps.iter().copied().fold(0.0_f64, f64::max);

    eprintln!(
        "cluster chaos: {} node kills ({} of the ORDERS leader) in {:.0} s; {} orders offered, {} accepted \
         ({} after a retry), {} final ({} Rejected and refunded) {:.1} s after the load stopped; \
         POST->final p50 {} ms, p99 {} ms, max {} ms; {} events, each once on ORDERS; longest wait \
         for the relay {} ms, for a worker {} ms; \
         {} reconnections ({}), the longest {:.0} ms",
        kills.len(),
        stream_leader_kills,
        chaos.as_secs_f64(),
        offered.len(),
        accepted.len(),
        retried,
        rows.len(),
        big.len(),
        settled.as_secs_f64(),
        latencies.value_at_quantile(0.50),
        latencies.value_at_quantile(0.99),
        latencies.max(),
        event_ids.len(),
        relay_worst,
        worker_worst,
        gaps.len(),
        per_service.join(", "),
        worst * 1000.0
    );
}
