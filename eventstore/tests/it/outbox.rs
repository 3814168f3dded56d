//! The outbox relay: every committed event reaches JetStream once, in aggregate order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pipeline_runtime::stream::{EventEnvelope, headers};
use serde_json::json;
use uuid::Uuid;

use crate::harness::{Stack, append, append_chain, event};

/// Event ids on the stream, counted by `Nats-Msg-Id`.
pub fn msg_id_counts(
    messages: &[async_nats::jetstream::message::StreamMessage],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for message in messages {
        let id = message
            .headers
            .get(headers::MSG_ID)
            .expect("Nats-Msg-Id is set")
            .to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Per aggregate, the versions in stream order must only go up.
pub fn assert_aggregate_order(messages: &[async_nats::jetstream::message::StreamMessage]) {
    let mut last: HashMap<String, i64> = HashMap::new();
    for message in messages {
        let envelope: EventEnvelope = serde_json::from_slice(&message.payload).expect("envelope");
        let previous = last.insert(envelope.aggregate_id.clone(), envelope.aggregate_version);
        assert!(
            previous.is_none_or(|p| p < envelope.aggregate_version),
            "aggregate {} published version {} after {previous:?}",
            envelope.aggregate_id,
            envelope.aggregate_version
        );
    }
}

#[tokio::test]
async fn a_committed_event_is_published_with_its_id_type_version_and_trace_headers() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();
    let sent = event(&aggregate, "created", json!({"order_id": aggregate}));
    append(&mut client, sent.clone(), 0).await.expect("append");

    stack
        .wait_for_stream_count(1, Duration::from_secs(10))
        .await;
    let messages = stack.stream_messages().await;
    let message = &messages[0];
    assert_eq!(message.subject.as_str(), "ORDERS.created");
    let header = |name: &str| message.headers.get(name).map(ToString::to_string);
    assert_eq!(header(headers::MSG_ID), Some(sent.event_id.clone()));
    assert_eq!(header(headers::EVENT_TYPE).as_deref(), Some("created"));
    assert_eq!(header(headers::AGGREGATE_ID), Some(aggregate.clone()));
    assert_eq!(header(headers::AGGREGATE_VERSION).as_deref(), Some("1"));
    assert_eq!(
        header(headers::TRACEPARENT),
        sent.metadata.get("traceparent").cloned()
    );
    assert_eq!(header(headers::CORRELATION_ID), Some(aggregate.clone()));
    let envelope: EventEnvelope = serde_json::from_slice(&message.payload).expect("envelope");
    assert_eq!(envelope.event_id.to_string(), sent.event_id);
    assert_eq!(envelope.event_data, json!({"order_id": aggregate}));

    // Removed from the outbox only after the acknowledgement.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stack.outbox_len().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the outbox empties");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn appends_succeed_while_nats_is_down_and_each_reaches_the_stream_exactly_once_after() {
    let mut stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let mut aggregates = Vec::new();
    for _ in 0..5 {
        aggregates.push(append_chain(&mut client, 4).await);
    }
    stack
        .wait_for_stream_count(20, Duration::from_secs(10))
        .await;

    stack.nats.stop().expect("NATS stops");
    for aggregate in &aggregates {
        for version in 4..8 {
            append(
                &mut client,
                event(aggregate, "paymentdebited", json!({"v": version})),
                version,
            )
            .await
            .expect("appends do not need NATS");
        }
    }
    assert!(
        stack.outbox_len().await >= 20,
        "the events wait in the outbox"
    );
    stack.nats.start_again().expect("NATS restarts");

    stack
        .wait_for_stream_count(40, Duration::from_secs(30))
        .await;
    // The relay publishes only what the outbox holds: once it is empty, no further publish can
    // come, so the stream's contents are final.
    stack.wait_for_empty_outbox(Duration::from_secs(30)).await;
    let messages = stack.stream_messages().await;
    let counts = msg_id_counts(&messages);
    assert_eq!(messages.len(), 40, "no message twice");
    assert_eq!(counts.len(), 40);
    assert!(counts.values().all(|&n| n == 1));
    assert_aggregate_order(&messages);
    assert_eq!(stack.outbox_len().await, 0);
}

/// The outbox has no foreign key to events (migration 0002: the key was checked, with a row lock,
/// on every event appended). What pairs each row with its event is the one statement that writes
/// both: with NATS stopped the rows stay, and each names an event's id, aggregate and version.
#[tokio::test]
async fn each_outbox_row_is_written_with_its_event_by_one_statement_and_no_foreign_key() {
    let mut stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    stack.nats.stop().expect("NATS stops");
    let mut aggregates = Vec::new();
    for _ in 0..3 {
        aggregates.push(append_chain(&mut client, 3).await);
    }

    let pool = stack.pool().await;
    let foreign_keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'outbox'::regclass AND contype = 'f'",
    )
    .fetch_one(&pool)
    .await
    .expect("reading the outbox's constraints");
    assert_eq!(foreign_keys, 0, "no key is checked per outbox row");
    let (rows, paired): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(e.event_id) FROM outbox o \
         LEFT JOIN events e ON e.event_id = o.event_id AND e.aggregate_id = o.aggregate_id \
                           AND e.aggregate_version = o.aggregate_version \
         WHERE o.aggregate_id = ANY($1)",
    )
    .bind(&aggregates)
    .fetch_one(&pool)
    .await
    .expect("reading the outbox");
    assert_eq!(
        rows, 9,
        "one outbox row per event appended while NATS is down"
    );
    assert_eq!(
        paired, rows,
        "every outbox row names its event's id, aggregate and version"
    );
}

#[tokio::test]
async fn an_event_committed_by_an_instance_that_crashed_before_publishing_is_published_by_the_next()
{
    let mut stack = Stack::start().await;
    stack.nats.stop().expect("NATS stops");
    let crashed = stack.instance().await;
    let aggregate = append_chain(&mut crashed.client(), 3).await;
    // The process dies between commit and publish.
    crashed.crash();
    stack.nats.start_again().expect("NATS restarts");

    let _successor = stack.instance().await;
    stack
        .wait_for_stream_count(3, Duration::from_secs(15))
        .await;
    let messages = stack.stream_messages().await;
    let versions: Vec<String> = messages
        .iter()
        .map(|m| {
            m.headers
                .get(headers::AGGREGATE_VERSION)
                .expect("version")
                .to_string()
        })
        .collect();
    assert_eq!(versions, ["1", "2", "3"]);
    assert!(messages.iter().all(|m| {
        m.headers
            .get(headers::AGGREGATE_ID)
            .map(ToString::to_string)
            == Some(aggregate.clone())
    }));
}

#[tokio::test]
async fn two_instances_on_one_database_publish_every_event_once_in_aggregate_order() {
    let stack = Stack::start().await;
    let first = stack.instance().await;
    let second = stack.instance().await;

    // Ten aggregates, each written alternately through both instances, all at once.
    let writers = (0..10).map(|_| {
        let clients = [first.client(), second.client()];
        tokio::spawn(async move {
            let mut clients = clients;
            let aggregate = Uuid::new_v4().to_string();
            for version in 0..20 {
                let client = &mut clients[usize::try_from(version % 2).expect("small")];
                append(
                    client,
                    event(&aggregate, "paymentdebited", json!({"v": version})),
                    version,
                )
                .await
                .expect("append");
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("writer");
    }

    stack
        .wait_for_stream_count(200, Duration::from_secs(30))
        .await;
    stack.wait_for_empty_outbox(Duration::from_secs(30)).await;
    let messages = stack.stream_messages().await;
    assert_eq!(messages.len(), 200, "every event once");
    let ids: HashSet<_> = msg_id_counts(&messages).into_keys().collect();
    assert_eq!(ids.len(), 200);
    assert_aggregate_order(&messages);
}

/// Commits an event and its outbox row straight into the database, as an instance that died between
/// commit and publish leaves them. Returns the event id.
async fn insert_unpublished(pool: &sqlx::PgPool, aggregate: &str, version: i64) -> String {
    let event_id = Uuid::new_v4();
    let mut tx = pool.begin().await.expect("transaction");
    sqlx::query(
        "INSERT INTO events (event_id, event_type, aggregate_id, aggregate_type, aggregate_version, \
                             event_data, stream, metadata, created_at) \
         VALUES ($1, 'paymentdebited', $2, 'order', $3, $4::TEXT::JSONB, 'ORDERS', '{}'::JSONB, now())",
    )
    .bind(event_id)
    .bind(aggregate)
    .bind(version)
    .bind(json!({ "v": version }).to_string())
    .execute(&mut *tx)
    .await
    .expect("event inserted");
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, aggregate_version, created_at) \
         VALUES ($1, $2, $3, now())",
    )
    .bind(event_id)
    .bind(aggregate)
    .bind(version)
    .execute(&mut *tx)
    .await
    .expect("outbox row inserted");
    tx.commit().await.expect("commit");
    event_id.to_string()
}

#[tokio::test]
async fn the_memory_path_and_the_sweep_each_publish_every_event_once_in_version_order() {
    let stack = Stack::start().await;
    let pool = stack.pool().await;
    let [p, q, r, s] = std::array::from_fn(|_| Uuid::new_v4().to_string());

    // Memory path: three versions of one aggregate and another aggregate in one call go out in
    // rounds, straight from the appender.
    let first = stack.instance().await;
    let outcomes = crate::harness::append_all(
        &mut first.client(),
        vec![
            (event(&p, "created", json!({"v": 1})), 0),
            (event(&p, "paymentdebited", json!({"v": 2})), 1),
            (event(&q, "created", json!({"v": 1})), 0),
            (event(&p, "approved", json!({"v": 3})), 2),
        ],
    )
    .await
    .expect("appended");
    assert!(outcomes.iter().all(|o| o.code == 0), "{outcomes:?}");
    stack.wait_for_empty_outbox(Duration::from_secs(10)).await;
    stack
        .wait_for_stream_count(4, Duration::from_secs(10))
        .await;
    first.stop().await;

    // Sweep on start: rows committed while no relay ran, one of them p's fourth version.
    for (aggregate, version) in [(&r, 1), (&r, 2), (&p, 4)] {
        insert_unpublished(&pool, aggregate, version).await;
    }
    let second = stack.instance().await;
    stack.wait_for_empty_outbox(Duration::from_secs(10)).await;
    stack
        .wait_for_stream_count(7, Duration::from_secs(10))
        .await;
    // p's fifth version, from memory again: this relay saw the sweep publish the fourth.
    append(
        &mut second.client(),
        event(&p, "cancelled", json!({"v": 5})),
        4,
    )
    .await
    .expect("appended");

    // Across both paths while running: s's first version is a fresh row the memory path never saw,
    // so the second (committed through the service) must wait for the sweep to take the first.
    insert_unpublished(&pool, &s, 1).await;
    append(
        &mut second.client(),
        event(&s, "paymentdebited", json!({"v": 2})),
        1,
    )
    .await
    .expect("appended");
    stack.wait_for_empty_outbox(Duration::from_secs(20)).await;
    stack
        .wait_for_stream_count(10, Duration::from_secs(10))
        .await;

    // The outbox is empty: nothing is left that could be published again.
    let messages = stack.stream_messages().await;
    let counts = msg_id_counts(&messages);
    let stored: HashSet<String> = sqlx::query_scalar("SELECT event_id::TEXT FROM events")
        .fetch_all(&pool)
        .await
        .expect("event ids")
        .into_iter()
        .collect();
    assert_eq!(stored.len(), 10);
    assert_eq!(messages.len(), 10, "every event once: {counts:?}");
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), stored);
    assert_aggregate_order(&messages);
    let versions_of = |aggregate: &str| -> Vec<i64> {
        messages
            .iter()
            .map(|m| serde_json::from_slice::<EventEnvelope>(&m.payload).expect("envelope"))
            .filter(|e| e.aggregate_id == aggregate)
            .map(|e| e.aggregate_version)
            .collect()
    };
    assert_eq!(versions_of(&p), [1, 2, 3, 4, 5]);
    assert_eq!(versions_of(&s), [1, 2]);
    second.stop().await;
}
