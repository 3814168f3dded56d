//! The pipeline on a three-node NATS cluster (the repository's `nats-cluster/` files) with the streams at
//! three replicas, under a steady load while each node in turn is SIGKILLed and started again: no
//! accepted order is lost, every event reaches the stream once, and the services reconnect by
//! themselves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e_tests::{Options, Pipeline};
use testkit::NatsCluster;

use crate::steady::{
    Load, all_accepted, expect_all_final, expect_store_and_stream_agree, stream_info,
};

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
/// The services that hold a NATS connection (ordersvc talks to the event store only).
const NATS_CLIENTS: [&str; 4] = [
    "eventstore",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
];

/// Node index (0..3) of `orders-nats-<n>` (n = 1..3), as the repository's files name them.
fn node_of(server_name: &str) -> Option<usize> {
    server_name
        .strip_prefix("orders-nats-")
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1))
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

    let load = Load::start(&pipeline, RATE, POST_DEADLINE);

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
    let offered = load.stop().await;
    let chaos = began.elapsed();

    let retried = offered.iter().filter(|o| o.attempts.len() > 1).count();
    assert!(
        offered.len() as u64 >= RATE * 40,
        "the load ran ({} orders offered)",
        offered.len()
    );
    // NATS is not on the POST path (ordersvc appends through the event store), so nothing is refused.
    let accepted = all_accepted(&offered);
    let stream_leader_kills = kills
        .iter()
        .filter(|(node, leader, _, _)| leader.as_deref().and_then(node_of) == Some(*node))
        .count();
    assert!(
        stream_leader_kills >= 1,
        "at least one kill hit the ORDERS leader: {kills:?}"
    );

    // Every accepted order reaches its final status: Approved, or Rejected and refunded.
    let drained = Instant::now();
    let times = expect_all_final(&pipeline, &accepted, Duration::from_secs(90)).await;
    let settled = drained.elapsed();
    // Milliseconds, kept exactly (hdrhistogram's three digits are exact below 2,048).
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("three significant digits");
    for ms in &times {
        let ms = u64::try_from(*ms).unwrap_or(0);
        if latencies.record(ms).is_err() {
            latencies.saturating_record(ms);
        }
    }

    // The event store and the stream agree: every event once on ORDERS, nothing left in the outbox,
    // nothing dead-lettered.
    let agreed = expect_store_and_stream_agree(&pipeline, &js, &accepted).await;
    let events_db = sqlx::PgPool::connect(&pipeline.database_url("eventstoredb"))
        .await
        .expect("eventstoredb");
    let (relay_worst, worker_worst) = longest_delays(&events_db, &agreed.published).await;

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
        accepted.ids.len(),
        retried,
        times.len(),
        accepted.big.len(),
        settled.as_secs_f64(),
        latencies.value_at_quantile(0.50),
        latencies.value_at_quantile(0.99),
        latencies.max(),
        agreed.event_ids.len(),
        relay_worst,
        worker_worst,
        gaps.len(),
        per_service.join(", "),
        worst * 1000.0
    );
}
