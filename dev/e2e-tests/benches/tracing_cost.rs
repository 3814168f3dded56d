//! What span export to Zipkin costs the whole pipeline: the same load with export on and off, in
//! the same run, alternating, so the machine's noise hits both alike.
//!
//! ```sh
//! cargo build --release --bins && cargo bench -p e2e-tests --bench tracing_cost [-- ORDERS ROUNDS]
//! ```
//!
//! Each measurement starts the real binaries (from `target/release`) on a fresh PostgreSQL and
//! nats-server, warms up, POSTs `ORDERS` orders 32 at a time and waits until every one is final.
//! "Off" still creates spans (trace ids travel with every event either way); it only exports none.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use e2e_tests::{Pipeline, order_body};
use futures::StreamExt as _;
use testkit::Zipkin;

struct Run {
    post_per_s: f64,
    post_p50: Duration,
    post_p99: Duration,
    final_per_s: f64,
    spans: usize,
}

async fn measure(export: bool, orders: usize) -> Run {
    let zipkin = Zipkin::start().expect("Zipkin receiver");
    let endpoint = if export {
        zipkin.endpoint()
    } else {
        String::new()
    };
    let pipeline = Pipeline::start_with_env(&[("ZIPKIN_ENDPOINT", endpoint.as_str())])
        .await
        .expect("the pipeline starts");
    for i in 0..20 {
        let (status, _) = pipeline
            .post_order(&order_body(&format!("warmup{i}"), "1.00", 1), None)
            .await;
        assert_eq!(status, 201, "warm-up order accepted");
    }
    let started = Instant::now();
    let results: Vec<(String, Duration)> = futures::stream::iter(0..orders)
        .map(|i| {
            let pipeline = &pipeline;
            async move {
                let at = Instant::now();
                let (status, body) = pipeline
                    .post_order(&order_body(&format!("load{}", i % 100), "5.00", 1), None)
                    .await;
                assert_eq!(status, 201, "order accepted: {body}");
                (
                    body["order_id"].as_str().expect("order_id").to_owned(),
                    at.elapsed(),
                )
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let posted = started.elapsed();
    for (id, _) in &results {
        pipeline.wait_final(id).await;
    }
    let finished = started.elapsed();
    // Nearest rank, in microseconds to three significant digits.
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("three significant digits");
    for (_, latency) in &results {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if latencies.record(micros).is_err() {
            latencies.saturating_record(micros);
        }
    }
    let at = |percent: u32| {
        Duration::from_micros(latencies.value_at_quantile(f64::from(percent) / 100.0))
    };
    // Let the last batch of spans arrive before counting.
    tokio::time::sleep(Duration::from_secs(6)).await;
    Run {
        post_per_s: orders as f64 / posted.as_secs_f64(),
        post_p50: at(50),
        post_p99: at(99),
        final_per_s: orders as f64 / finished.as_secs_f64(),
        spans: zipkin.spans().len(),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let orders = args.first().copied().unwrap_or(300);
    let rounds = args.get(1).copied().unwrap_or(2);
    println!("tracing export cost: {orders} orders, 32 in flight, {rounds} rounds of off/on");
    println!(
        "{:<12} {:>8} {:>10} {:>10} {:>9} {:>7}",
        "run", "POST/s", "POST p50", "POST p99", "final/s", "spans"
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for export in [false, true] {
            let run = measure(export, orders).await;
            println!(
                "{:<12} {:>8.0} {:>8.1}ms {:>8.1}ms {:>9.1} {:>7}",
                format!("{round} export {}", if export { "on" } else { "off" }),
                run.post_per_s,
                run.post_p50.as_secs_f64() * 1000.0,
                run.post_p99.as_secs_f64() * 1000.0,
                run.final_per_s,
                run.spans,
            );
            if export { on.push(run) } else { off.push(run) }
        }
    }
    let mean = |runs: &[Run], f: fn(&Run) -> f64| {
        runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64
    };
    let final_off = mean(&off, |r| r.final_per_s);
    let final_on = mean(&on, |r| r.final_per_s);
    let p99_off = mean(&off, |r| r.post_p99.as_secs_f64() * 1000.0);
    let p99_on = mean(&on, |r| r.post_p99.as_secs_f64() * 1000.0);
    println!(
        "cost of export: throughput {:+.1}% ({final_off:.1} -> {final_on:.1} final orders/s), POST p99 {:+.1}% ({p99_off:.1} -> {p99_on:.1} ms)",
        (final_on / final_off - 1.0) * 100.0,
        (p99_on / p99_off - 1.0) * 100.0,
    );
}
