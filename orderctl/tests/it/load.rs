//! `orderctl load` (and the order commands) against the whole pipeline, started in this process:
//! PostgreSQL and nats-server from the test kit, the event store, ordersvc and the three workers.

use pipeline_harness::{EVENTSTORE, ORDERS, Schema};
use serde_json::Value;
use testkit::Postgres;
use tokio::task::JoinHandle;

use crate::harness::{Nats, orderctl_binary};

/// Every service of the pipeline on 127.0.0.1:0; aborted on drop.
struct Pipeline {
    _nats: Nats,
    _postgres: Postgres,
    api_url: String,
    /// An operator's token, which ordersvc accepts (its JWKS is in `_keys`).
    token: String,
    _keys: tempfile::TempDir,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Pipeline {
    async fn start() -> Pipeline {
        let nats = Nats::start().await;
        let nats_url = nats.server.url();
        let postgres = Postgres::start().expect("PostgreSQL starts");
        let payments = Schema {
            database: "paymentsdb",
            migrator: &paymentworker::MIGRATOR,
        };
        let eventstore_database_url = EVENTSTORE.create(&postgres).await;
        let orders_database_url = ORDERS.create(&postgres).await;
        let payments_database_url = payments.create(&postgres).await;

        let any_port = || "127.0.0.1:0".parse().expect("address");
        let eventstore = eventstore::App::build(eventstore::Config::new(
            any_port(),
            &eventstore_database_url,
            &nats_url,
        ))
        .await
        .expect("event store builds");
        let eventstore_url = format!("http://{}", eventstore.local_addr());
        let issuer = testkit::tokens::TokenIssuer::generate("https://id.orderctl.test", "orders")
            .expect("a signing key");
        let keys = tempfile::tempdir().expect("a folder for the JWKS");
        let jwks = keys.path().join("jwks.json");
        issuer.write_jwks(&jwks).expect("the JWKS");
        let mut ordersvc_config =
            ordersvc::Config::new(any_port(), &eventstore_url, &orders_database_url).with_tokens(
                jwks.to_str().expect("a UTF-8 path"),
                issuer.issuer(),
                issuer.audience(),
            );
        ordersvc_config.nats = pipeline_runtime::nats::NatsArgs::new(&nats_url);
        let ordersvc = ordersvc::App::build(ordersvc_config)
            .await
            .expect("ordersvc builds");
        let api_url = format!("http://{}", ordersvc.local_addr());
        let payments = paymentworker::App::build(paymentworker::Config::new(
            &nats_url,
            &eventstore_url,
            &payments_database_url,
        ))
        .await
        .expect("paymentworker builds");
        let review =
            reviewworker::App::build(reviewworker::Config::new(&nats_url, &eventstore_url))
                .await
                .expect("reviewworker builds");
        let query_model = querymodelworker::App::build(querymodelworker::Config::new(
            &nats_url,
            &eventstore_url,
            &orders_database_url,
        ))
        .await
        .expect("querymodelworker builds");
        let stopped = std::future::pending::<()>;
        let tasks = vec![
            tokio::spawn(eventstore.run_until_stopped(stopped())),
            tokio::spawn(ordersvc.run_until_stopped(stopped())),
            tokio::spawn(payments.run_until_stopped(stopped())),
            tokio::spawn(review.run_until_stopped(stopped())),
            tokio::spawn(query_model.run_until_stopped(stopped())),
        ];
        Pipeline {
            _nats: nats,
            _postgres: postgres,
            api_url,
            token: issuer.operator(),
            _keys: keys,
            tasks,
        }
    }

    async fn orderctl(&self, args: &[&str]) -> std::process::Output {
        let mut argv = vec!["--api-url".to_owned(), self.api_url.clone()];
        argv.extend(args.iter().map(|arg| (*arg).to_owned()));
        orderctl_binary(argv, vec![("ORDERCTL_TOKEN", self.token.clone())]).await
    }
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "orderctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_load_places_every_order_and_follows_each_to_a_final_status() {
    let pipeline = Pipeline::start().await;

    let output = pipeline
        .orderctl(&[
            "load",
            "--count",
            "10",
            "--concurrency",
            "4",
            "--rate",
            "max",
            "--customers",
            "3",
            "--settle",
            "60s",
            "--json",
        ])
        .await;
    let report: Value = serde_json::from_str(&stdout(&output)).expect("the report is JSON");
    let count = |value: &Value| value.as_u64().expect("a count");
    let sum = |value: &Value| {
        value
            .as_object()
            .expect("counts by name")
            .values()
            .map(count)
            .sum::<u64>()
    };

    // Ten orders sent; on a healthy pipeline every one is accepted and ends final.
    assert_eq!(count(&report["sent"]), 10, "{report:#}");
    assert_eq!(
        count(&report["accepted"]) + sum(&report["errors"]),
        10,
        "{report:#}"
    );
    assert_eq!(
        sum(&report["final_by_status"]) + count(&report["not_final"]),
        count(&report["accepted"]),
        "{report:#}"
    );
    assert_eq!(count(&report["accepted"]), 10, "{report:#}");
    assert_eq!(count(&report["not_final"]), 0, "{report:#}");
    for status in report["final_by_status"]
        .as_object()
        .expect("statuses")
        .keys()
    {
        assert!(
            ["Approved", "PaymentFailed", "Rejected", "Cancelled"].contains(&status.as_str()),
            "{status}"
        );
    }
    for phase in ["post", "post_to_final"] {
        let latency = &report[phase]["latency"];
        let ms = |p: &str| latency[p].as_f64().expect("a latency");
        assert!(ms("p50_ms") <= ms("p95_ms"), "{phase}: {latency}");
        assert!(ms("p95_ms") <= ms("p99_ms"), "{phase}: {latency}");
        assert!(ms("p99_ms") <= ms("max_ms"), "{phase}: {latency}");
        assert!(report[phase]["per_second"].as_f64().expect("a rate") > 0.0);
    }
    // A final status is reached after the POST is answered.
    assert!(
        report["post_to_final"]["latency"]["p50_ms"].as_f64()
            >= report["post"]["latency"]["p50_ms"].as_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_created_from_the_command_line_can_be_read_listed_watched_and_not_cancelled_once_final()
 {
    let pipeline = Pipeline::start().await;

    let created = pipeline
        .orderctl(&[
            "create",
            "--customer",
            "cli-1",
            "--restaurant",
            "r1",
            "--item",
            "p1:Pizza:12.50:2",
            "--idempotency-key",
            "cli-test-1",
            "--json",
        ])
        .await;
    let order: Value = serde_json::from_str(&stdout(&created)).expect("JSON");
    assert_eq!(order["amount"], "25.00");
    let id = order["order_id"].as_str().expect("an id").to_owned();

    // watch prints each status it sees and returns once the order is final (Approved: 25.00 is
    // within the wallet and the review limit).
    let watched = stdout(&pipeline.orderctl(&["watch", &id, "--timeout", "60s"]).await);
    assert!(
        watched
            .lines()
            .last()
            .is_some_and(|line| line.contains("Approved")),
        "{watched}"
    );

    let shown = stdout(&pipeline.orderctl(&["get", &id]).await);
    assert!(shown.contains("status      Approved"), "{shown}");
    let listed = stdout(
        &pipeline
            .orderctl(&["list", "--customer", "cli-1", "--all"])
            .await,
    );
    assert!(listed.contains(&id), "{listed}");

    // Too late to cancel: the API's 409 message, one line, exit code 1.
    let cancel = pipeline.orderctl(&["cancel", &id]).await;
    assert_eq!(cancel.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&cancel.stderr);
    assert!(
        stderr.contains("too late") && stderr.contains("409"),
        "{stderr}"
    );

    // No Zipkin here: trace says so in one line.
    let unused = testkit::free_port();
    let trace = pipeline
        .orderctl(&[
            "trace",
            &id,
            "--zipkin-url",
            &format!("http://127.0.0.1:{unused}"),
        ])
        .await;
    assert_eq!(trace.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&trace.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("Zipkin") || stderr.contains("no trace id"),
        "{stderr}"
    );
}
