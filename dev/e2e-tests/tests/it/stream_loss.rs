//! The stream taken away under a steady load, and made whole again from the event store with
//! `eventstore republish`: every accepted order final, each event once on the stream, no payment
//! taken twice, no event applied twice to the read model, and a second run sends nothing.
//!
//! - The broker's store folder deleted after a `kill -9`: the stream comes back empty (and without
//!   any memory of the ids it held), the bootstrapper recreates it with its consumers, the event
//!   store's start-up check names the command, and `--from-start` refills it.
//! - The stream purged with the pipeline running: JetStream still remembers the purged ids for its
//!   duplicate window and acknowledges their republish as duplicates without storing them. The
//!   test shortens the window to 10 s (the bootstrapper's is 120 s) so that it can show, quickly,
//!   that the command reports this and fails, and that `--wait-duplicate-window` then succeeds.

use std::collections::HashMap;
use std::time::Duration;

use e2e_tests::Pipeline;
use rust_decimal::Decimal;
use testkit::eventually;

use crate::steady::{
    Accepted, Load, all_accepted, expect_all_final, expect_payments_once,
    expect_store_and_stream_agree, stream_info,
};

/// Orders offered per second.
const RATE: u64 = 10;
/// How long one POST is retried: beyond the event store's restart.
const POST_DEADLINE: Duration = Duration::from_secs(60);
/// Every customer's wallet starts with this (paymentworker's default).
const CREDIT: Decimal = Decimal::from_parts(100_000, 0, 0, false, 2);
/// The purge test's duplicate window: short, so that waiting it out is quick.
const SHORT_WINDOW: Duration = Duration::from_secs(10);

async fn stream_messages(js: &async_nats::jetstream::Context) -> Option<u64> {
    stream_info(js, "ORDERS")
        .await
        .map(|info| info.state.messages)
}

/// Runs `eventstore republish args`; its exit status and stdout.
fn republish(pipeline: &Pipeline, args: &[&str]) -> (bool, String) {
    let output = pipeline
        .republish(args)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!(
        "eventstore republish {}: {}\n{stdout}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), stdout)
}

/// A number per accepted order, from `sql` (bound to the accepted ids) on `database`.
async fn per_order(
    pipeline: &Pipeline,
    database: &str,
    sql: &str,
    accepted: &Accepted,
) -> HashMap<String, i64> {
    let pool = sqlx::PgPool::connect(&pipeline.database_url(database))
        .await
        .expect(database);
    let rows: HashMap<String, i64> = sqlx::query_as(sql)
        .bind(&accepted.ids)
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .into_iter()
        .collect();
    pool.close().await;
    rows
}

/// No event was applied twice to the read model, nor skipped: each accepted order's version is
/// the number of its events in the store (querymodelworker applies version n only on n - 1).
async fn expect_read_model_versions(pipeline: &Pipeline, accepted: &Accepted) {
    let stored = per_order(
        pipeline,
        "eventstoredb",
        "SELECT aggregate_id, count(*) FROM events WHERE aggregate_id = ANY($1) GROUP BY aggregate_id",
        accepted,
    )
    .await;
    let versions = per_order(
        pipeline,
        "ordersdb",
        "SELECT order_id::text, version FROM orders WHERE order_id = ANY($1::uuid[])",
        accepted,
    )
    .await;
    for id in &accepted.ids {
        assert_eq!(
            versions.get(id),
            stored.get(id),
            "order {id}: read model version = events in the store"
        );
    }
}

/// The checks after a repair: all final, store and stream agree, each payment once, each event
/// applied once; then a second run finds nothing to send and the stream stays as it is.
async fn expect_whole_and_idempotent(pipeline: &Pipeline, offered: &[crate::steady::Offered]) {
    let accepted = all_accepted(offered);
    expect_all_final(pipeline, &accepted, Duration::from_secs(90)).await;
    let js = pipeline.jetstream().await;
    expect_store_and_stream_agree(pipeline, &js, &accepted).await;
    expect_payments_once(pipeline, offered, CREDIT).await;
    expect_read_model_versions(pipeline, &accepted).await;

    let before = stream_messages(&js).await.expect("ORDERS answers");
    let (ok, report) = republish(pipeline, &["--from-start"]);
    assert!(ok, "a second run succeeds: {report}");
    assert!(
        report.contains(" 0 missing") && report.contains("sent: 0 republished"),
        "a second run finds nothing missing: {report}"
    );
    assert_eq!(
        stream_messages(&js).await,
        Some(before),
        "a second run adds nothing to the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_lost_with_its_store_folder_under_load_is_rebuilt_from_the_event_store() {
    let mut pipeline = Pipeline::start().await.expect("the pipeline starts");
    let js = pipeline.jetstream().await;
    let load = Load::start(&pipeline, RATE, POST_DEADLINE);
    // The fault strikes a pipeline in full flow.
    eventually(
        Duration::from_secs(30),
        "60 events on the stream",
        || async { stream_messages(&js).await.filter(|n| *n >= 60) },
    )
    .await;

    pipeline.nats.stop().expect("nats-server killed");
    std::fs::remove_dir_all(pipeline.nats.store_dir()).expect("store folder deleted");
    pipeline
        .nats
        .start_again()
        .expect("nats-server starts again");
    // Orders go on while the stream is gone: the event store commits them, the relay holds them.
    let at_fault = pipeline.count_events().await;
    eventually(
        Duration::from_secs(30),
        "orders committed without a stream",
        || async { (pipeline.count_events().await >= at_fault + 30).then_some(()) },
    )
    .await;
    pipeline
        .bootstrap(&[])
        .expect("the bootstrapper recreates the streams and consumers");

    // An event store started now says the stream lost events, and what to run.
    pipeline.restart("eventstore", 0);
    eventually(
        Duration::from_secs(30),
        "the start-up check to name the command",
        || async {
            pipeline
                .log("eventstore", 0)
                .contains("eventstore republish --from-start")
                .then_some(())
        },
    )
    .await;

    let (ok, report) = republish(&pipeline, &["--from-start"]);
    assert!(ok, "republish succeeds: {report}");
    assert!(
        !report.contains("sent: 0 republished"),
        "the lost events were republished: {report}"
    );
    // Load goes on after the repair, then stops.
    let repaired = pipeline.count_events().await;
    eventually(
        Duration::from_secs(30),
        "orders after the repair",
        || async { (pipeline.count_events().await >= repaired + 30).then_some(()) },
    )
    .await;
    let offered = load.stop().await;
    expect_whole_and_idempotent(&pipeline, &offered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_stream_is_refilled_once_its_duplicate_window_has_passed() {
    let pipeline = Pipeline::start().await.expect("the pipeline starts");
    let js = pipeline.jetstream().await;
    let mut config = js
        .get_stream("ORDERS")
        .await
        .expect("ORDERS")
        .cached_info()
        .config
        .clone();
    config.duplicate_window = SHORT_WINDOW;
    js.update_stream(&config)
        .await
        .expect("a short duplicate window");
    let load = Load::start(&pipeline, RATE, POST_DEADLINE);
    eventually(
        Duration::from_secs(30),
        "60 events on the stream",
        || async { stream_messages(&js).await.filter(|n| *n >= 60) },
    )
    .await;

    js.get_stream("ORDERS")
        .await
        .expect("ORDERS")
        .purge()
        .await
        .expect("ORDERS purged");
    // Right away, the ids published in the last seconds are still remembered: JetStream acks them
    // as duplicates and stores nothing, and the command must say so and fail.
    let (ok, report) = republish(&pipeline, &[]);
    assert!(
        !ok && report.contains("acknowledged as duplicates"),
        "duplicates inside the window are reported as not republished: {report}"
    );
    let (ok, report) = republish(&pipeline, &["--wait-duplicate-window"]);
    assert!(
        ok,
        "after waiting out the window everything is republished: {report}"
    );

    let offered = load.stop().await;
    expect_whole_and_idempotent(&pipeline, &offered).await;
}
