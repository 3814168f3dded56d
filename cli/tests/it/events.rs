//! `orderctl events ORDER_ID` against a real event store.

use std::collections::BTreeMap;
use std::time::Duration;

use order_domain::{AGGREGATE_TYPE, Approved, OrderEvent};
use pipeline_runtime::eventstore::{EventStoreClient, NewEvent};
use testkit::Postgres;
use uuid::Uuid;

use crate::harness::{Nats, orderctl_binary};

#[tokio::test]
async fn events_prints_an_orders_history_in_version_order() {
    let nats = Nats::start().await;
    let postgres = Postgres::start().expect("PostgreSQL starts");
    let url = postgres.url("eventstoredb");
    bootstrapper::ensure_database(&url).await.expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    bootstrapper::migrate(bootstrapper::Context::EventStore, &pool)
        .await
        .expect("migrated");
    pool.close().await;
    let app = eventstore::App::build(eventstore::Config::new(
        "127.0.0.1:0".parse().expect("address"),
        &url,
        nats.server.url(),
    ))
    .await
    .expect("event store builds");
    let eventstore_url = format!("http://{}", app.local_addr());
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));

    let order_id = Uuid::new_v4();
    let client =
        EventStoreClient::connect_lazy(&eventstore_url, Duration::from_secs(5)).expect("client");
    // The store does not check the domain's rules: two events are enough for a history.
    for (version, event_type) in [(0, "created"), (1, "approved")] {
        let event = OrderEvent::Approved(Approved { order_id });
        client
            .append(
                NewEvent {
                    event_id: Uuid::new_v4(),
                    event_type: event_type.to_owned(),
                    aggregate_id: order_id.to_string(),
                    aggregate_type: AGGREGATE_TYPE.to_owned(),
                    data: event.to_json(),
                    metadata: BTreeMap::new(),
                },
                version,
            )
            .await
            .expect("appended");
    }

    let output = orderctl_binary(
        vec![
            "events".into(),
            order_id.to_string(),
            "--eventstore-url".into(),
            eventstore_url.clone(),
        ],
        vec![],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].trim_start().starts_with("1 ") && lines[0].contains("created"));
    assert!(lines[1].trim_start().starts_with("2 ") && lines[1].contains("approved"));

    let unknown = orderctl_binary(
        vec!["events".into(), Uuid::new_v4().to_string()],
        vec![("EVENTSTORE_URL", eventstore_url.clone())],
    )
    .await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("has no events"));
    server.abort();
}
