//! Appends: optimistic concurrency, idempotency, validation.

use std::sync::Arc;

use serde_json::json;
use testkit::scans;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{Stack, append, append_chain, event};

/// Two instances, so two appenders, racing on one version again and again: each of their one-event
/// batches takes the fast path, and when the two statements overlap the loser's fails on the
/// unique (aggregate, version) key; it must still be told of the conflict, not of a failure.
#[tokio::test]
async fn two_instances_racing_on_one_version_leave_one_winner_and_one_conflict_each_time() {
    let stack = Stack::start().await;
    // At READ COMMITTED, PostgreSQL's default (the test server's is SERIALIZABLE, which reports
    // the same race as a serialization failure, retried): the loser sees the unique violation.
    let read_committed = format!(
        "{}&options=-c%20default_transaction_isolation%3Dread%5C%20committed",
        stack.database_url
    );
    let (first, second) = (
        crate::harness::Instance::start(stack.config_with_database(&read_committed)).await,
        crate::harness::Instance::start(stack.config_with_database(&read_committed)).await,
    );
    for round in 0..40 {
        let aggregate = Uuid::new_v4().to_string();
        append(
            &mut first.client(),
            event(&aggregate, "created", json!({})),
            0,
        )
        .await
        .expect("created");
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let race = [first.client(), second.client()].map(|mut client| {
            let aggregate = aggregate.clone();
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                append(&mut client, event(&aggregate, "approved", json!({})), 1).await
            })
        });
        let mut codes: Vec<Code> = Vec::new();
        for outcome in futures::future::join_all(race).await {
            codes.push(match outcome.expect("task") {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            });
        }
        codes.sort_by_key(|code| *code as i32);
        assert_eq!(
            codes,
            [Code::Ok, Code::FailedPrecondition],
            "round {round}: one winner, one conflict"
        );
    }
}

#[tokio::test]
async fn sixteen_writers_on_one_version_leave_exactly_one_winner_and_no_gap() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let aggregate = Uuid::new_v4().to_string();
    append(
        &mut instance.client(),
        event(&aggregate, "created", json!({"n": 0})),
        0,
    )
    .await
    .expect("first event");

    let start = Arc::new(tokio::sync::Barrier::new(16));
    let writers = (0..16).map(|i| {
        let mut client = instance.client();
        let aggregate = aggregate.clone();
        let start = Arc::clone(&start);
        tokio::spawn(async move {
            start.wait().await;
            append(
                &mut client,
                event(&aggregate, "paymentdebited", json!({"writer": i})),
                1,
            )
            .await
        })
    });
    let outcomes = futures::future::join_all(writers).await;
    let mut winners = 0;
    for outcome in outcomes {
        match outcome.expect("task") {
            Ok(response) => {
                winners += 1;
                assert_eq!(response.aggregate_version, 2);
                assert!(!response.duplicate);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(
                    status.message().contains("expected version 1")
                        && status.message().contains("version 2"),
                    "the loser learns expected and actual: {}",
                    status.message()
                );
            }
        }
    }
    assert_eq!(winners, 1, "exactly one writer wins");

    let pool = stack.pool().await;
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT aggregate_version FROM events WHERE aggregate_id = $1 ORDER BY 1",
    )
    .bind(&aggregate)
    .fetch_all(&pool)
    .await
    .expect("versions");
    assert_eq!(versions, [1, 2], "no gaps, no duplicates");
}

#[tokio::test]
async fn the_same_event_appended_twice_is_one_row_with_one_version() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();
    let first = event(&aggregate, "created", json!({"order_id": aggregate}));

    let original = append(&mut client, first.clone(), 0)
        .await
        .expect("appended");
    // A retry after a lost answer: same id and content, possibly another trace and a stale version.
    let mut retry = first.clone();
    retry.metadata.insert(
        "traceparent".into(),
        "00-11111111111111111111111111111111-2222222222222222-01".into(),
    );
    let replay = append(&mut client, retry, 0)
        .await
        .expect("replay succeeds");
    assert_eq!(original.aggregate_version, 1);
    assert_eq!(
        replay.aggregate_version, 1,
        "the replay answers the original version"
    );
    assert!(replay.duplicate && !original.duplicate);

    let pool = stack.pool().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id = $1::UUID")
        .bind(&first.event_id)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn another_event_under_a_used_id_is_already_exists() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();
    let first = event(&aggregate, "created", json!({"amount": "10.00"}));
    append(&mut client, first.clone(), 0)
        .await
        .expect("appended");

    let mut other = first.clone();
    other.event_data = json!({"amount": "99.00"}).to_string();
    let status = append(&mut client, other, 1).await.expect_err("refused");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(&first.event_id));
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_writes_nothing() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();
    let good = || event(&aggregate, "created", json!({"ok": true}));

    let cases: Vec<(&str, eventstore_proto::Event)> = vec![
        (
            "empty event id",
            eventstore_proto::Event {
                event_id: String::new(),
                ..good()
            },
        ),
        (
            "empty aggregate id",
            eventstore_proto::Event {
                aggregate_id: String::new(),
                ..good()
            },
        ),
        (
            "empty event type",
            eventstore_proto::Event {
                event_type: String::new(),
                ..good()
            },
        ),
        (
            "payload is an array",
            eventstore_proto::Event {
                event_data: "[1,2,3]".into(),
                ..good()
            },
        ),
        (
            "payload is a string",
            eventstore_proto::Event {
                event_data: "\"hello\"".into(),
                ..good()
            },
        ),
        (
            "payload is not JSON",
            eventstore_proto::Event {
                event_data: "{not json".into(),
                ..good()
            },
        ),
        (
            "unknown stream",
            eventstore_proto::Event {
                stream: "PAYMENTS".into(),
                ..good()
            },
        ),
        (
            "payload over 1 MiB",
            eventstore_proto::Event {
                event_data: json!({"blob": "x".repeat(1024 * 1024 + 512)}).to_string(),
                ..good()
            },
        ),
    ];
    for (case, bad) in cases {
        let status = append(&mut client, bad, 0).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            !status.message().is_empty(),
            "{case}: the message says what is wrong"
        );
    }
    let status = client
        .create_event(eventstore_proto::CreateEventRequest {
            event: None,
            expected_version: 0,
        })
        .await
        .expect_err("no event");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = append(&mut client, good(), -3)
        .await
        .expect_err("negative version");
    assert_eq!(status.code(), Code::InvalidArgument);

    let pool = stack.pool().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "nothing was written");
}

#[tokio::test]
async fn an_append_at_a_stale_version_names_expected_and_actual() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let aggregate = append_chain(&mut client, 3).await;
    let status = append(&mut client, event(&aggregate, "cancelled", json!({})), 1)
        .await
        .expect_err("stale");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("version 3"),
        "{}",
        status.message()
    );
    let status = append(
        &mut client,
        event(&Uuid::new_v4().to_string(), "created", json!({})),
        5,
    )
    .await
    .expect_err("a new aggregate is at version 0");
    assert_eq!(status.code(), Code::FailedPrecondition);
}

/// The appends run on connections that plan each statement once (a keyed pool). Planned while the
/// tables were analyzed empty, which makes PostgreSQL's generic plan a sequential scan, the append
/// still finds each aggregate's last version through the index once `events` holds many rows.
#[tokio::test]
async fn an_append_planned_on_an_analyzed_empty_table_reads_it_by_index_as_it_grows() {
    let stack = Stack::start().await;
    let pool = stack.pool().await;
    scans::statistics_say_empty(&pool, &["events", "outbox"]).await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    // Planned now, on the empty tables.
    for _ in 0..3 {
        append_chain(&mut client, 1).await;
    }
    // The table grows, and its statistics still say it is empty.
    sqlx::query(
        "INSERT INTO events (event_id, event_type, aggregate_id, aggregate_type, \
         aggregate_version, event_data, stream, metadata, created_at) \
         SELECT gen_random_uuid(), 'created', 'bulk-' || n, 'order', 1, '{}', 'ORDERS', '{}', \
         now() FROM generate_series(1, 20000) AS n",
    )
    .execute(&pool)
    .await
    .expect("events inserted");
    scans::count_from_now(&pool, "events").await;
    const APPENDS: i64 = 6;
    for _ in 0..APPENDS {
        append_chain(&mut client, 1).await;
    }
    instance.stop().await;
    let scans = scans::counted(&pool, "events", APPENDS).await;
    // Expected: every append read the last version by the index; none read the table in full.
    assert_eq!(scans.sequential, 0, "{scans:?}");
    assert!(scans.index >= APPENDS, "{scans:?}");
}
