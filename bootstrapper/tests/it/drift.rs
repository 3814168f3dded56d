//! Configuration changed by hand between runs is put back, or refused with a clear message.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{self, StorageType},
};
use bootstrapper::Outcome;
use pipeline_runtime::stream::{DUPLICATE_WINDOW, STREAM, filters_several_subjects};

use crate::Servers;

/// The stored configuration of the ORDERS stream.
async fn orders_config(js: &jetstream::Context) -> stream::Config {
    js.get_stream(STREAM)
        .await
        .expect("ORDERS exists")
        .cached_info()
        .config
        .clone()
}

#[tokio::test]
async fn a_duplicate_window_changed_by_hand_is_put_back() {
    let servers = Servers::nats_only();
    let config = servers.config();
    bootstrapper::run(&config)
        .await
        .expect("first run succeeds");

    let js = servers.jetstream().await;
    let mut changed = orders_config(&js).await;
    changed.duplicate_window = Duration::from_secs(10);
    js.update_stream(&changed).await.expect("changed by hand");

    let report = bootstrapper::run(&config)
        .await
        .expect("second run succeeds");
    assert_eq!(
        report.outcome("stream ORDERS"),
        Some(Outcome::Updated),
        "{report:#?}"
    );
    assert_eq!(
        report.outcome("stream DEADLETTERS"),
        Some(Outcome::Unchanged)
    );
    let restored = orders_config(&js).await;
    assert_eq!(restored.duplicate_window, DUPLICATE_WINDOW);

    let third = bootstrapper::run(&config)
        .await
        .expect("third run succeeds");
    assert!(third.all_unchanged(), "{third:#?}");
}

/// A NATS server the bootstrapper has run on once, a JetStream context on it and its ORDERS stream.
async fn bootstrapped() -> (Servers, jetstream::Context, stream::Stream) {
    let servers = Servers::nats_only();
    bootstrapper::run(&servers.config())
        .await
        .expect("first run succeeds");
    let js = servers.jetstream().await;
    let orders = js.get_stream(STREAM).await.expect("ORDERS exists");
    (servers, js, orders)
}

#[tokio::test]
async fn a_consumer_changed_by_hand_is_put_back() {
    let (servers, js, orders) = bootstrapped().await;
    let config = servers.config();
    let spec = pipeline_runtime::stream::consumer("reviewworker").expect("defined");
    let mut changed = spec.config_for(&js.client());
    changed.ack_wait = Duration::from_secs(5);
    changed.max_ack_pending = 7;
    let _: async_nats::jetstream::consumer::PullConsumer = orders
        .create_consumer(changed)
        .await
        .expect("changed by hand");

    let report = bootstrapper::run(&config)
        .await
        .expect("second run succeeds");
    assert_eq!(
        report.outcome("consumer reviewworker"),
        Some(Outcome::Updated),
        "{report:#?}"
    );
    assert_eq!(
        report.outcome("consumer paymentworker"),
        Some(Outcome::Unchanged)
    );
    let info = orders
        .consumer_info("reviewworker")
        .await
        .expect("consumer exists");
    assert_eq!(info.config.ack_wait, spec.ack_wait);
    assert_eq!(info.config.max_ack_pending, spec.max_ack_pending);
}

#[tokio::test]
async fn a_consumer_made_for_nats_server_2_9_takes_fewer_subjects_once_the_server_can_filter() {
    let (servers, js, orders) = bootstrapped().await;
    let config = servers.config();
    // paymentworker's consumer as a bootstrapper made it on 2.9: every subject of the stream,
    // with an event waiting that is not paymentworker's business.
    let spec = pipeline_runtime::stream::consumer("paymentworker").expect("defined");
    orders
        .delete_consumer(spec.durable)
        .await
        .expect("consumer deleted");
    let _: async_nats::jetstream::consumer::PullConsumer = orders
        .create_consumer(spec.config(false))
        .await
        .expect("made as on 2.9");
    js.publish(format!("{STREAM}.approved"), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    let report = bootstrapper::run(&config)
        .await
        .expect("second run succeeds");
    let version = js.client().server_info().version;
    let info = orders
        .consumer_info(spec.durable)
        .await
        .expect("consumer exists");
    if filters_several_subjects(&version) {
        // Expected on 2.10+: updated in place (same durable, no message lost) to the subjects it
        // acts on, and the waiting `approved` is no longer its to take.
        assert_eq!(
            report.outcome("consumer paymentworker"),
            Some(Outcome::Updated),
            "nats-server {version}: {report:#?}"
        );
        assert_eq!(
            info.config.filter_subjects,
            ["ORDERS.created", "ORDERS.rejected", "ORDERS.cancelled"],
            "nats-server {version}"
        );
        assert_eq!(info.num_pending, 0, "nats-server {version}");
    } else {
        // Expected on 2.9: nothing to change.
        assert_eq!(
            report.outcome("consumer paymentworker"),
            Some(Outcome::Unchanged),
            "nats-server {version}: {report:#?}"
        );
        assert_eq!(info.config.filter_subject, "ORDERS.*");
        assert_eq!(info.num_pending, 1, "nats-server {version}");
    }
}

#[tokio::test]
async fn a_stream_in_memory_is_refused_with_a_clear_message() {
    let servers = Servers::nats_only();
    let js = servers.jetstream().await;
    js.create_stream(stream::Config {
        storage: StorageType::Memory,
        ..bootstrapper::orders_stream_config(1)
    })
    .await
    .expect("created by hand");

    let err = bootstrapper::ensure_stream(&js, 1)
        .await
        .expect_err("storage cannot change");
    let message = format!("{err:#}");
    assert!(
        message.contains("ORDERS") && message.contains("storage"),
        "{message}"
    );
}

#[tokio::test]
async fn consumers_on_a_missing_stream_are_an_error_not_a_panic() {
    let servers = Servers::nats_only();
    let js = servers.jetstream().await;
    let err = bootstrapper::ensure_consumers(&js)
        .await
        .expect_err("no stream yet");
    let message = format!("{err:#}");
    assert!(
        message.contains("ORDERS") && message.contains("not found"),
        "{message}"
    );
}

#[tokio::test]
async fn replicas_a_standalone_server_cannot_hold_are_refused() {
    let servers = Servers::nats_only();
    let js = servers.jetstream().await;
    bootstrapper::ensure_stream(&js, 1).await.expect("created");

    // nats-server 2.9 would accept this update and keep running a single copy.
    let err = bootstrapper::ensure_stream(&js, 3)
        .await
        .expect_err("not a cluster");
    let message = format!("{err:#}");
    assert!(
        message.contains("3 replicas") && message.contains("cluster"),
        "{message}"
    );
    assert_eq!(orders_config(&js).await.num_replicas, 1);
}
