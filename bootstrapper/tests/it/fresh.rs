//! A first run on empty servers, and a second run that must change nothing.

use std::time::Duration;

use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::stream::StorageType;
use bootstrapper::{Context, Outcome};
use pipeline_runtime::stream::{CONSUMERS, DEAD_LETTER_STREAM, STREAM, filters_several_subjects};

use crate::{Servers, migrations};

#[tokio::test]
async fn a_fresh_server_gets_databases_tables_streams_and_consumers() {
    let servers = Servers::start();
    let report = bootstrapper::run(&servers.config())
        .await
        .expect("bootstrap succeeds");

    for database in ["eventstoredb", "ordersdb", "paymentsdb"] {
        assert_eq!(
            report.outcome(&format!("database {database}")),
            Some(Outcome::Created),
            "{report:?}"
        );
    }
    for context in Context::ALL {
        assert_eq!(
            report.outcome(&format!("migrations {context}")),
            Some(Outcome::Migrated(migrations(context))),
            "{report:?}"
        );
    }
    assert_eq!(report.outcome("stream ORDERS"), Some(Outcome::Created));
    assert_eq!(report.outcome("stream DEADLETTERS"), Some(Outcome::Created));
    for spec in CONSUMERS {
        assert_eq!(
            report.outcome(&format!("consumer {}", spec.durable)),
            Some(Outcome::Created)
        );
    }

    for (database, tables) in [
        ("eventstoredb", &["events", "outbox"][..]),
        ("ordersdb", &["orders", "order_items"][..]),
        ("paymentsdb", &["wallets", "payments"][..]),
    ] {
        let pool = servers.sql(database).await;
        for table in tables {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_name = $1)",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .expect("query runs");
            assert!(exists, "table {table} in {database}");
        }
    }

    let js = servers.jetstream().await;
    let orders = js
        .get_stream(STREAM)
        .await
        .expect("ORDERS exists")
        .cached_info()
        .config
        .clone();
    assert_eq!(orders.subjects, ["ORDERS.*"]);
    assert_eq!(orders.storage, StorageType::File);
    assert!(
        orders.duplicate_window >= Duration::from_secs(120),
        "{:?}",
        orders.duplicate_window
    );
    assert_eq!(orders.num_replicas, 1);
    let dead = js
        .get_stream(DEAD_LETTER_STREAM)
        .await
        .expect("DEADLETTERS exists")
        .cached_info()
        .config
        .clone();
    assert_eq!(dead.subjects, ["DEADLETTERS.>"]);
    assert_eq!(dead.storage, StorageType::File);
    assert_eq!(dead.max_age, Duration::ZERO);

    let stream = js.get_stream(STREAM).await.expect("ORDERS exists");
    let several = filters_several_subjects(&js.client().server_info().version);
    for spec in CONSUMERS {
        let info = stream
            .consumer_info(spec.durable)
            .await
            .expect("consumer exists");
        assert_eq!(info.config.durable_name.as_deref(), Some(spec.durable));
        assert_eq!(info.config.ack_policy, AckPolicy::Explicit);
        match spec.handles {
            Some(types) if several => {
                let subjects: Vec<String> = types.iter().map(|t| format!("{STREAM}.{t}")).collect();
                assert_eq!(info.config.filter_subjects, subjects, "{}", spec.durable);
            }
            _ => assert_eq!(info.config.filter_subject, spec.filter_subject),
        }
        assert_eq!(info.config.ack_wait, spec.ack_wait);
        assert!(
            info.config.deliver_subject.is_none(),
            "{} is a pull consumer",
            spec.durable
        );
    }
}

#[tokio::test]
async fn a_second_run_changes_nothing() {
    let servers = Servers::start();
    let config = servers.config();
    let first = bootstrapper::run(&config)
        .await
        .expect("first run succeeds");
    let before = snapshot(&servers).await;

    let second = bootstrapper::run(&config)
        .await
        .expect("second run succeeds");
    assert!(second.all_unchanged(), "{second:#?}");
    let names = |report: &bootstrapper::Report| {
        report
            .steps
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&second), names(&first));
    // Databases, access, migrations (root needs no role), streams, consumers.
    assert_eq!(second.steps.len(), 3 + 3 + 3 + 2 + CONSUMERS.len());

    let after = snapshot(&servers).await;
    assert_eq!(after, before);
}

#[tokio::test]
async fn databases_created_by_someone_else_are_only_migrated() {
    let servers = Servers::start();
    servers
        .postgres()
        .create_database("ordersdb")
        .await
        .expect("created by hand");
    let config = bootstrapper::Config {
        skip_nats: true,
        ..servers.config()
    };
    let report = bootstrapper::run(&config)
        .await
        .expect("bootstrap succeeds");
    assert_eq!(
        report.outcome("database ordersdb"),
        Some(Outcome::Unchanged)
    );
    assert_eq!(
        report.outcome("database paymentsdb"),
        Some(Outcome::Created)
    );
    assert_eq!(
        report.outcome("migrations orders"),
        Some(Outcome::Migrated(migrations(Context::Orders)))
    );
    assert_eq!(report.outcome("stream ORDERS"), None, "NATS was skipped");
}

/// What the bootstrapper manages, as stored by the servers.
#[derive(Debug, PartialEq)]
struct Snapshot {
    streams: Vec<async_nats::jetstream::stream::Config>,
    consumers: Vec<async_nats::jetstream::consumer::Config>,
    migrations: Vec<(String, i64, Vec<u8>, bool)>,
}

async fn snapshot(servers: &Servers) -> Snapshot {
    let js = servers.jetstream().await;
    let mut streams = Vec::new();
    for name in [STREAM, DEAD_LETTER_STREAM] {
        streams.push(
            js.get_stream(name)
                .await
                .expect("stream exists")
                .cached_info()
                .config
                .clone(),
        );
    }
    let stream = js.get_stream(STREAM).await.expect("ORDERS exists");
    let mut consumers = Vec::new();
    for spec in CONSUMERS {
        consumers.push(
            stream
                .consumer_info(spec.durable)
                .await
                .expect("consumer exists")
                .config,
        );
    }
    let mut migrations = Vec::new();
    for database in ["eventstoredb", "ordersdb", "paymentsdb"] {
        let pool = servers.sql(database).await;
        let rows: Vec<(i64, Vec<u8>, bool, String)> = sqlx::query_as(
            "SELECT version, checksum, success, installed_on::TEXT FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        .expect("_sqlx_migrations readable");
        migrations.extend(
            rows.into_iter()
                .map(|(version, checksum, success, installed_on)| {
                    (
                        format!("{database} {installed_on}"),
                        version,
                        checksum,
                        success,
                    )
                }),
        );
    }
    Snapshot {
        streams,
        consumers,
        migrations,
    }
}

#[tokio::test]
async fn paymentworker_is_delivered_only_what_it_acts_on_where_the_server_can_filter() {
    let servers = Servers::nats_only();
    bootstrapper::run(&servers.config())
        .await
        .expect("bootstrap succeeds");
    let js = servers.jetstream().await;
    for event_type in ["created", "paymentdebited", "approved", "cancelled"] {
        js.publish(format!("{STREAM}.{event_type}"), "{}".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    let version = js.client().server_info().version;
    let stream = js.get_stream(STREAM).await.expect("ORDERS exists");
    let mut pending = Vec::new();
    for durable in ["paymentworker", "reviewworker", "querymodelworker"] {
        let info = stream
            .consumer_info(durable)
            .await
            .expect("consumer exists");
        pending.push((durable, info.num_pending));
    }
    // Expected: on nats-server 2.10+ paymentworker's consumer holds only the `created` and the
    // `cancelled` (its `paymentdebited` and `approved` are never delivered to it); on 2.9 it holds
    // all four, and the worker acks the two unseen. The others take the same on both.
    let payments = if filters_several_subjects(&version) {
        2
    } else {
        4
    };
    assert_eq!(
        pending,
        [
            ("paymentworker", payments),
            ("reviewworker", 1),
            ("querymodelworker", 4)
        ],
        "nats-server {version}"
    );
}
