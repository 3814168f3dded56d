//! A database that goes away, and the service's own lifecycle.

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{Stack, append, event};

#[tokio::test]
async fn a_database_that_is_down_gives_unavailable_and_the_service_recovers_by_itself() {
    let mut stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();
    append(&mut client, event(&aggregate, "created", json!({})), 0)
        .await
        .expect("append");

    stack.postgres.stop().expect("PostgreSQL stops");
    let pending = event(&aggregate, "approved", json!({}));
    let status = append(&mut client, pending.clone(), 1)
        .await
        .expect_err("database is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let outcomes = crate::harness::append_all(&mut client, vec![(pending.clone(), 1)])
        .await
        .expect("a batch answers per event");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].code, Code::Unavailable as i32, "{outcomes:?}");
    let status = client
        .get_events(eventstore_proto::GetEventsRequest {
            aggregate_id: aggregate.clone(),
            ..Default::default()
        })
        .await
        .expect_err("reads too");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    stack.postgres.start_again().expect("PostgreSQL restarts");
    // The same service instance, no restart: retrying the same event succeeds once the pool reconnects.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let response = loop {
        match append(&mut client, pending.clone(), 1).await {
            Ok(response) => break response,
            Err(status)
                if status.code() == Code::Unavailable && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("did not recover: {status:?}"),
        }
    };
    assert_eq!(response.aggregate_version, 2);
}

#[tokio::test]
async fn the_health_service_reports_serving() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", instance.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "eventstore.EventStore".into(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        answer.status,
        i32::from(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );
}

#[tokio::test]
async fn a_graceful_stop_ends_followed_streams_and_publishes_what_was_committed() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let mut follower = client
        .get_events_stream(eventstore_proto::GetEventsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let aggregate = crate::harness::append_chain(&mut client, 5).await;
    drop(client);
    // The follower sees the five events while the service runs...
    for n in 1..=5 {
        let event = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_stream::StreamExt::next(&mut follower),
        )
        .await
        .unwrap_or_else(|_| panic!("event {n} of 5 reaches the follower within 10 s"))
        .unwrap_or_else(|| panic!("the stream ended before event {n} of 5"))
        .unwrap_or_else(|status| panic!("event {n} of 5: {status:?}"));
        assert_eq!(event.aggregate_id, aggregate);
        assert_eq!(event.aggregate_version, n);
    }
    instance.stop().await;
    // ...then, once it stopped, the end of the stream: not a hang, not more events.
    let end = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_stream::StreamExt::next(&mut follower),
    )
    .await
    .expect("the followed stream ends when the service stops, within 5 s");
    assert!(end.is_none(), "the stream ends cleanly, got {end:?}");
    stack.wait_for_stream_count(5, Duration::from_secs(5)).await;
    assert_eq!(
        stack.outbox_len().await,
        0,
        "nothing of {aggregate} left behind"
    );
}

/// A failover can end a connection after the server committed and before the store heard it. The
/// store cannot know, so it answers UNAVAILABLE (it does not retry by itself: the database may be
/// gone for seconds, and the client's deadline is the client's), and the client's retry with the
/// same event id finds the event and gets its version back: one event, one publish.
///
/// This is the fast path, where the append is one statement and its own transaction: the cut
/// comes after the server answered that statement.
#[tokio::test]
async fn an_append_whose_commit_was_cut_is_unavailable_and_its_retry_finds_it_committed() {
    let stack = Stack::start().await;
    let (proxy, instance) = behind_cut_proxy(&stack).await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();

    // The fast path: the execution of its one statement.
    proxy.arm_execution("INSERT INTO outbox");
    let pending = event(&aggregate, "created", json!({}));
    let status = append(&mut client, pending.clone(), 0)
        .await
        .expect_err("the answer to the append's statement was cut");
    assert_eq!(proxy.cuts(), 1, "the append's statement was cut");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let retry = append(&mut client, pending.clone(), 0)
        .await
        .expect("the retry succeeds");
    assert_eq!(
        retry.aggregate_version, 1,
        "the version of the first commit"
    );
    assert!(retry.duplicate, "the first attempt had committed");
    assert_committed_once(&stack, &aggregate, &pending, 1).await;
}

/// The same on the careful path (a batch that repeats a stored event goes that way): the cut comes
/// after the server answered the transaction's `COMMIT`.
#[tokio::test]
async fn a_careful_append_whose_commit_was_cut_is_unavailable_and_its_retry_finds_it_committed() {
    let stack = Stack::start().await;
    let (proxy, instance) = behind_cut_proxy(&stack).await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();
    let created = event(&aggregate, "created", json!({}));
    append(&mut client, created.clone(), 0)
        .await
        .expect("append");

    proxy.arm_commit();
    let pending = event(&aggregate, "approved", json!({}));
    let batch = vec![(created.clone(), 0), (pending.clone(), 1)];
    let cut = crate::harness::append_all(&mut client, batch.clone())
        .await
        .expect("the call answers, one outcome per event");
    assert_eq!(proxy.cuts(), 1, "the append's COMMIT was cut");
    let codes: Vec<i32> = cut.iter().map(|o| o.code).collect();
    assert_eq!(codes, vec![Code::Unavailable as i32; 2], "{cut:?}");

    let retry = crate::harness::append_all(&mut client, batch)
        .await
        .expect("the retry succeeds");
    let versions: Vec<(i32, i64, bool)> = retry
        .iter()
        .map(|o| (o.code, o.aggregate_version, o.duplicate))
        .collect();
    assert_eq!(
        versions,
        vec![(Code::Ok as i32, 1, true), (Code::Ok as i32, 2, true)],
        "both found committed, at their versions"
    );
    assert_committed_once(&stack, &aggregate, &pending, 2).await;
}

/// An event store whose connections to the database go through a [`testkit::CutProxy`].
async fn behind_cut_proxy(stack: &Stack) -> (testkit::CutProxy, crate::harness::Instance) {
    let proxy = testkit::CutProxy::to_port(stack.postgres.port())
        .await
        .expect("proxy");
    let instance = crate::harness::Instance::start(
        stack.config_with_database(&proxy.url_for(&stack.database_url)),
    )
    .await;
    (proxy, instance)
}

/// The aggregate holds `count` events, the outbox drains, and `pending` was published once.
async fn assert_committed_once(
    stack: &Stack,
    aggregate: &str,
    pending: &eventstore_proto::Event,
    count: u64,
) {
    let pool = stack.pool().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(aggregate)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(u64::try_from(rows).ok(), Some(count), "each event once");
    // The relay never heard of the cut commit; its sweep publishes the outbox row, once.
    stack.wait_for_empty_outbox(Duration::from_secs(10)).await;
    stack
        .wait_for_stream_count(count, Duration::from_secs(5))
        .await;
    let published = crate::outbox::msg_id_counts(&stack.stream_messages().await);
    assert_eq!(published.get(&pending.event_id), Some(&1), "{published:?}");
    assert_eq!(
        u64::try_from(published.len()).ok(),
        Some(count),
        "{published:?}"
    );
}
