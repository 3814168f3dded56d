//! The drain wait ends drained only when nothing is pending, and otherwise says what was.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use testkit::drain::{Drain, consumers, outbox, until_drained};
use testkit::{NatsServer, Postgres};

/// Long enough for a few looks, short enough that a test that must time out stays fast.
const SHORT: Duration = Duration::from_millis(300);
const EVERY: Duration = Duration::from_millis(50);
/// For a wait that must end drained.
const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_wait_ends_drained_at_the_first_look_that_finds_nothing_pending() {
    let mut looks = 0;
    let drained = until_drained(PATIENCE, EVERY, async || {
        looks += 1;
        Ok(if looks < 3 {
            vec![format!("look {looks}: busy")]
        } else {
            Vec::new()
        })
    })
    .await;
    assert!(drained.is_drained(), "{drained}");
    assert_eq!(looks, 3);
    assert!(drained.pending().is_empty());
}

#[tokio::test]
async fn a_wait_gives_up_at_its_deadline_and_says_what_was_still_pending() {
    let drained = until_drained(SHORT, EVERY, async || {
        Ok(vec!["a worker is busy".to_owned()])
    })
    .await;
    let Drain::TimedOut { after, pending } = &drained else {
        panic!("timed out, not {drained:?}");
    };
    assert!(*after >= SHORT, "{after:?}");
    assert_eq!(pending, &["a worker is busy".to_owned()]);
    let error = drained.into_result().expect_err("a timeout is an error");
    assert!(error.to_string().contains("a worker is busy"), "{error:#}");
}

#[tokio::test]
async fn a_probe_that_cannot_look_counts_as_pending() {
    let drained = until_drained(SHORT, EVERY, async || anyhow::bail!("database down")).await;
    assert!(!drained.is_drained());
    assert_eq!(
        drained.pending(),
        &["could not look: database down".to_owned()]
    );
}

#[tokio::test]
async fn a_probe_that_never_answers_does_not_hold_the_wait_past_its_deadline() {
    let hanging = until_drained(SHORT, EVERY, async || {
        std::future::pending::<()>().await;
        Ok(Vec::new())
    });
    let drained = tokio::time::timeout(PATIENCE, hanging)
        .await
        .expect("the wait ends at its deadline, not when the probe answers");
    assert!(!drained.is_drained(), "{drained}");
    assert!(drained.after() < SHORT + EVERY * 4, "{drained}");
    assert!(
        drained.pending()[0].starts_with("could not look: no answer within"),
        "{drained}"
    );
}

#[tokio::test]
async fn a_consumer_drains_only_once_its_messages_are_delivered_and_acknowledged() {
    let nats = NatsServer::start().expect("starting nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connecting");
    let js = jetstream::new(client);
    let stream = js
        .create_stream(stream::Config {
            name: "WORK".into(),
            subjects: vec!["work.>".into()],
            ..Default::default()
        })
        .await
        .expect("creating the stream");
    let worker: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("worker".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("creating the consumer");
    js.publish("work.one", "job".into())
        .await
        .expect("publishing")
        .await
        .expect("the publish ack");

    let waiting = until_drained(SHORT, EVERY, async || {
        consumers(&js, "WORK", &["worker"]).await
    })
    .await;
    assert_eq!(
        waiting.pending(),
        &["worker has 1 messages pending and 0 unacknowledged".to_owned()],
        "{waiting}"
    );

    let message = worker
        .fetch()
        .max_messages(1)
        .expires(PATIENCE)
        .messages()
        .await
        .expect("fetching")
        .next()
        .await
        .expect("a message within the fetch's expiry")
        .expect("a message, not an error");
    let in_hand = until_drained(SHORT, EVERY, async || {
        consumers(&js, "WORK", &["worker"]).await
    })
    .await;
    assert_eq!(
        in_hand.pending(),
        &["worker has 0 messages pending and 1 unacknowledged".to_owned()],
        "delivered is not done: {in_hand}"
    );

    message.double_ack().await.expect("acknowledging");
    let drained = until_drained(PATIENCE, EVERY, async || {
        consumers(&js, "WORK", &["worker"]).await
    })
    .await;
    assert!(drained.is_drained(), "{drained}");

    let missing = until_drained(SHORT, EVERY, async || {
        consumers(&js, "WORK", &["nobody"]).await
    })
    .await;
    assert!(
        missing
            .pending()
            .first()
            .is_some_and(|left| left.starts_with("could not look: consumer nobody")),
        "a consumer that does not exist has drained nothing: {missing}"
    );
}

#[tokio::test]
async fn the_outbox_is_pending_until_its_rows_are_gone() {
    let pg = Postgres::start().expect("starting PostgreSQL");
    let url = pg.fresh_database().await.expect("creating a database");
    let events = sqlx::PgPool::connect(&url).await.expect("connecting");
    sqlx::query("CREATE TABLE outbox (event_id INT8 PRIMARY KEY)")
        .execute(&events)
        .await
        .expect("creating the outbox");
    sqlx::query("INSERT INTO outbox VALUES (1), (2)")
        .execute(&events)
        .await
        .expect("two unpublished events");

    let waiting = until_drained(SHORT, EVERY, async || outbox(&events).await).await;
    assert_eq!(
        waiting.pending(),
        &["the outbox holds 2 events".to_owned()],
        "{waiting}"
    );

    sqlx::query("DELETE FROM outbox")
        .execute(&events)
        .await
        .expect("publishing them");
    let drained = until_drained(PATIENCE, EVERY, async || outbox(&events).await).await;
    assert!(drained.is_drained(), "{drained}");
    events.close().await;
}
