//! `CreateEvents`: one call, one transaction, one outcome per event.

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{Stack, append, append_all, event};
use crate::outbox::{assert_aggregate_order, msg_id_counts};

#[tokio::test]
async fn each_event_of_a_batch_gets_its_own_outcome_and_the_good_ones_are_stored_and_published_once()
 {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let stored_aggregate = Uuid::new_v4().to_string();
    let stored = event(&stored_aggregate, "created", json!({"amount": "10.00"}));
    append(&mut client, stored.clone(), 0)
        .await
        .expect("first event");

    let new_aggregate = Uuid::new_v4().to_string();
    let new = event(&new_aggregate, "created", json!({"amount": "5.00"}));
    let conflict = event(&stored_aggregate, "cancelled", json!({"reason": "late"}));
    let mut other_content = stored.clone();
    other_content.event_data = json!({"amount": "99.00"}).to_string();
    let mut invalid = event(&new_aggregate, "Not A Type!", json!({}));
    invalid.event_id = Uuid::new_v4().to_string();
    let next = event(
        &stored_aggregate,
        "paymentdebited",
        json!({"amount": "10.00"}),
    );
    let outcomes = append_all(
        &mut client,
        vec![
            (new.clone(), 0),
            (stored.clone(), 0),
            (conflict.clone(), 0),
            (other_content, 1),
            (invalid.clone(), 0),
            (next.clone(), 1),
        ],
    )
    .await
    .expect("the call succeeds");

    let codes: Vec<i32> = outcomes.iter().map(|o| o.code).collect();
    let expected_codes = [
        Code::Ok,
        Code::Ok,
        Code::FailedPrecondition,
        Code::AlreadyExists,
        Code::InvalidArgument,
        Code::Ok,
    ]
    .map(|code| code as i32);
    assert_eq!(codes, expected_codes, "{outcomes:?}");
    assert_eq!(
        (outcomes[0].aggregate_version, outcomes[0].duplicate),
        (1, false)
    );
    assert_eq!(
        (outcomes[1].aggregate_version, outcomes[1].duplicate),
        (1, true),
        "the replay answers the original version"
    );
    assert!(
        outcomes[2].message.contains("expected version 0")
            && outcomes[2].message.contains("version 1"),
        "the conflict names expected and actual: {}",
        outcomes[2].message
    );
    assert!(outcomes[3].message.contains(&stored.event_id));
    assert!(outcomes[4].message.contains("event_type"));
    assert_eq!(
        (outcomes[5].aggregate_version, outcomes[5].duplicate),
        (2, false)
    );

    let pool = stack.pool().await;
    let mut rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_id::TEXT, aggregate_version FROM events ORDER BY aggregate_id, aggregate_version",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    rows.sort();
    let mut expected = vec![
        (stored.event_id.clone(), 1),
        (new.event_id.clone(), 1),
        (next.event_id.clone(), 2),
    ];
    expected.sort();
    assert_eq!(rows, expected, "only the good events are stored");

    stack.wait_for_empty_outbox(Duration::from_secs(10)).await;
    stack
        .wait_for_stream_count(3, Duration::from_secs(10))
        .await;
    let messages = stack.stream_messages().await;
    let counts = msg_id_counts(&messages);
    assert_eq!(messages.len(), 3, "{counts:?}");
    for id in [&stored.event_id, &new.event_id, &next.event_id] {
        assert_eq!(counts.get(id), Some(&1), "{id} published once");
    }
    assert_aggregate_order(&messages);
}

#[tokio::test]
async fn an_empty_or_oversized_batch_is_refused_as_a_whole_and_writes_nothing() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let status = append_all(&mut client, Vec::new())
        .await
        .expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let too_many = (0..1025)
        .map(|i| {
            (
                event(&Uuid::new_v4().to_string(), "created", json!({"i": i})),
                0,
            )
        })
        .collect();
    let status = append_all(&mut client, too_many)
        .await
        .expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("1024"), "{}", status.message());

    let pool = stack.pool().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_batch_of_many_events_commits_whole_even_when_larger_than_the_batch_size() {
    let stack = Stack::start().await;
    let mut config = stack.config();
    config.batch_size = 16;
    let instance = crate::harness::Instance::start(config).await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();
    // One aggregate's chain of 200 versions in one call: it can only commit in one transaction.
    let chain = (0..200)
        .map(|v| (event(&aggregate, "paymentdebited", json!({"v": v})), v))
        .collect();
    let outcomes = append_all(&mut client, chain).await.expect("appended");
    assert!(
        outcomes
            .iter()
            .zip(1..)
            .all(|(o, v)| o.code == 0 && o.aggregate_version == v),
        "{:?}",
        outcomes.iter().find(|o| o.code != 0)
    );
    stack.wait_for_empty_outbox(Duration::from_secs(20)).await;
    stack
        .wait_for_stream_count(200, Duration::from_secs(10))
        .await;
    let messages = stack.stream_messages().await;
    assert_eq!(messages.len(), 200);
    assert_aggregate_order(&messages);
}
