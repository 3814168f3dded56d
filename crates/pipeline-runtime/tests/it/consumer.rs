//! A worker's consumer loop when NATS goes away under it.
//!
//! The loop keeps a pull request waiting on the consumer's leader. When the node it is connected to
//! dies and led the consumer, the client reconnects to another node at once, but its own recovery
//! first asks for the consumer's info, which goes unanswered until the consumer has a new leader
//! and then times out (10 s) before it pulls again. The loop notices the silence (no idle heartbeat)
//! and pulls again itself, as soon as the consumer has a leader.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use pipeline_runtime::consumer::{self, Delivery, Failure, Options};
use pipeline_runtime::stream::{EventEnvelope, STREAM, SUBJECTS};
use testkit::{NatsCluster, NatsServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A batch handler that answers each message of the batch with `handler`.
fn each<H, Fut>(
    handler: H,
) -> impl Fn(Vec<Delivery>) -> futures::future::JoinAll<Fut> + Send + Sync + 'static
where
    H: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send,
{
    move |batch| futures::future::join_all(batch.into_iter().map(&handler))
}

const DURABLE: &str = "querymodelworker";

/// async-nats' request timeout, which bounds the consumer info request its pull stream sends to
/// recover after a reconnect.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The idle heartbeat the loop asks of each pull request (`consumer::PULL_HEARTBEAT`).
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

async fn connect(urls: &str) -> async_nats::Client {
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|url| url.parse().expect("a node URL"))
        .collect();
    async_nats::connect(servers.as_slice())
        .await
        .expect("connecting to NATS")
}

fn envelope(version: i64) -> EventEnvelope {
    EventEnvelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: "created".to_owned(),
        aggregate_id: uuid::Uuid::new_v4().to_string(),
        aggregate_type: "order".to_owned(),
        aggregate_version: version,
        stream: STREAM.to_owned(),
        event_data: serde_json::json!({}),
        metadata: Default::default(),
        created_at: time::OffsetDateTime::now_utc(),
    }
}

/// Publishes `event` until JetStream acknowledges it (elections may be under way), at most 30 s;
/// returns its stream sequence.
async fn publish(js: &jetstream::Context, event: &EventEnvelope) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = serde_json::to_vec(event).expect("JSON");
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
        let attempt = async {
            js.publish_with_headers("ORDERS.created", headers, body.clone().into())
                .await?
                .await
                .map_err(anyhow::Error::from)
        };
        if let Ok(Ok(ack)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            return ack.sequence;
        }
        assert!(Instant::now() < deadline, "no acknowledgement within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server name of the consumer's leader, once there is one that is not `not`, at most 30 s.
async fn consumer_leader(js: &jetstream::Context, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = async {
            let stream = js.get_stream(STREAM).await.ok()?;
            let mut consumer: PullConsumer = stream.get_consumer(DURABLE).await.ok()?;
            consumer.info().await.ok()?.cluster.clone()?.leader
        }
        .await;
        if let Some(leader) = leader
            && Some(leader.as_str()) != not
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "the consumer has no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn node_of(server_name: &str) -> usize {
    server_name
        .strip_prefix("testkit-nats-")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("{server_name} is not a testkit node"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_loop_pulls_again_when_the_consumers_leader_dies_under_it() {
    testkit::init_tracing();
    let mut cluster = NatsCluster::start().expect("starting the cluster");
    // A fresh cluster forms each asset's own group before it answers: with every core busy (CI
    // runs tests side by side) the durable consumer once took longer than the client's default 5 s.
    // The set-up may wait; what is timed is the loop after the kill.
    let admin = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .build(connect(&cluster.urls()).await);
    admin
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECTS.to_owned()],
            storage: stream::StorageType::File,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("creating ORDERS at three replicas");
    let spec = pipeline_runtime::stream::consumer(DURABLE).expect("a consumer spec");
    admin
        .get_stream(STREAM)
        .await
        .expect("ORDERS")
        .create_consumer(spec.config_for(&admin.client()))
        .await
        .expect("creating the durable consumer");
    let leader = consumer_leader(&admin, None).await;
    let killed = node_of(&leader);

    // The worker talks to the consumer's leader: when that node dies the worker reconnects to
    // another (learnt from the server) while the consumer has no leader yet.
    let worker_client = connect(&cluster.url(killed)).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let handler = move |delivery: Delivery| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send((delivery.envelope.event_id, Instant::now()));
            Ok::<(), Failure>(())
        }
    };
    let worker = tokio::spawn(consumer::run_batches(
        worker_client.clone(),
        spec,
        Options::default(),
        each(handler),
        stop.clone(),
    ));

    let first = envelope(1);
    publish(&admin, &first).await;
    let got = tokio::time::timeout(Duration::from_secs(15), seen.recv())
        .await
        .expect("the first message is handled within 15 s");
    assert_eq!(got.map(|(id, _)| id), Some(first.event_id));

    cluster.kill(killed).expect("killing the consumer's leader");
    let killed_at = Instant::now();
    let second = envelope(1);
    publish(&admin, &second).await;
    let published = Instant::now();
    // The election takes the cluster a few seconds, which no client can shorten; what the loop owes
    // is to pull again soon after it. Ask with a short timeout: during the election the request
    // goes unanswered.
    let quick = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(connect(&cluster.urls()).await);
    let new_leader = consumer_leader(&quick, Some(&leader)).await;
    let elected = Instant::now();
    // A redelivery of the first message (its ack may have gone to the dead leader) does not count.
    let handled = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some((id, at)) = seen.recv().await {
            if id == second.event_id {
                return Some(at);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the second message is handled within 30 s");
    tracing::info!(
        published_ms = (published - killed_at).as_millis() as u64,
        elected_ms = (elected - killed_at).as_millis() as u64,
        handled_ms = (handled - killed_at).as_millis() as u64,
        "after the kill of the consumer's leader"
    );
    // Without the loop's own pull, the client's recovery pulls again only after its consumer info
    // request, sent on reconnecting (after the kill), timed out: the message must be handled before
    // that moment could have come. When the election itself ends too late for the two to be told
    // apart, the bound is the election plus two missed heartbeats and the pause before pulling
    // again (with room for two busy cores), never less generous than that.
    let client_alone = killed_at + CLIENT_REQUEST_TIMEOUT;
    let loop_after_election = elected.max(published) + 2 * PULL_HEARTBEAT + Duration::from_secs(2);
    let bound = client_alone.max(loop_after_election);
    assert!(
        handled < bound,
        "the message was handled {:?} after the kill, not before the client's own recovery could \
         have pulled ({CLIENT_REQUEST_TIMEOUT:?}) or soon after the election; new leader \
         {new_leader} (old: {leader}), elected {:?} after the kill",
        handled - killed_at,
        elected - killed_at
    );
    assert_eq!(
        worker_client.connection_state(),
        async_nats::connection::State::Connected,
        "the worker reconnected by itself"
    );

    stops_cleanly(&stop, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_loop_pulls_again_when_a_lone_nats_server_comes_back() {
    let (mut nats, admin, spec) = lone_server().await;
    let worker_client = connect(&nats.url()).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let handler = move |delivery: Delivery| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(delivery.envelope.event_id);
            Ok::<(), Failure>(())
        }
    };
    let worker = tokio::spawn(consumer::run_batches(
        worker_client.clone(),
        spec,
        Options::default(),
        each(handler),
        stop.clone(),
    ));
    let first = envelope(1);
    publish(&admin, &first).await;
    let got = tokio::time::timeout(Duration::from_secs(15), seen.recv()).await;
    assert_eq!(
        got,
        Ok(Some(first.event_id)),
        "the first message is handled"
    );

    // Down for longer than two heartbeats: the loop sees its request lost while disconnected and
    // must pull once the server is back, not pile requests up behind the outage.
    nats.stop().expect("stopping nats-server");
    tokio::time::sleep(Duration::from_secs(5)).await;
    nats.start_again().expect("starting nats-server again");
    let second = envelope(1);
    let sequence = publish(&admin, &second).await;
    // Within 15 s of its publish, 20 s of the stop: before the lost pull request (sent before the
    // stop) could have expired (30 s) and the client pulled again by itself. The first message may
    // come again before it: its ack can die with the killed server, and while 2.9.10 redelivers
    // it only after the ack wait (30 s), 2.15.1 was seen to redeliver it right after the restart.
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    let got = loop {
        let got = tokio::time::timeout_at(until, seen.recv()).await;
        if got != Ok(Some(first.event_id)) {
            break got;
        }
    };
    assert_eq!(
        got,
        Ok(Some(second.event_id)),
        "the message published after the restart is handled, and nothing but the first's redelivery before it"
    );
    // Once the consumer delivered and acked it with nothing pending or unacked, nothing more can
    // come: whatever else the loop handled is already in the channel. The first message may come
    // again (its ack can die with the killed server, and the restored consumer redelivers it after
    // its ack wait, 30 s): at least once; the second, once.
    testkit::jetstream::wait_consumer_idle(
        &admin,
        STREAM,
        DURABLE,
        sequence,
        Duration::from_secs(60),
    )
    .await;
    while let Ok(again) = seen.try_recv() {
        assert_eq!(
            again, first.event_id,
            "nothing but a redelivery of the first message comes after the second"
        );
    }

    stops_cleanly(&stop, worker).await;
}

/// An outage of a dependency (here: the event store refusing connections) is not the message's
/// fault: however many deliveries it lasts, the message is not dead-lettered, and it is handled once
/// the dependency is back. A failure of the message itself still is, after `max_deliveries`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_outage_longer_than_the_delivery_budget_dead_letters_nothing() {
    use pipeline_runtime::eventstore::ClientError;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    let (nats, admin, spec) = lone_server().await;
    let outage_deliveries = 8;
    let outage_victim = envelope(1);
    let poison = envelope(1);
    let victim_id = outage_victim.event_id;
    let handled = Arc::new(AtomicI64::new(0));
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let handler = {
        let handled = Arc::clone(&handled);
        move |delivery: Delivery| {
            let handled = Arc::clone(&handled);
            let seen_tx = seen_tx.clone();
            async move {
                if delivery.envelope.event_id != victim_id {
                    return Err(Failure::retry(anyhow::anyhow!("this message never works")));
                }
                if delivery.delivered <= outage_deliveries {
                    return Err(Failure::retry(
                        anyhow::Error::from(ClientError::Unavailable("connection refused".into()))
                            .context("reading the order's history"),
                    ));
                }
                handled.fetch_add(1, Ordering::SeqCst);
                let _ = seen_tx.send(delivery.delivered);
                Ok(())
            }
        }
    };
    let options = Options {
        max_deliveries: 3,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        ..Options::default()
    };
    let stop = CancellationToken::new();
    let worker = tokio::spawn(consumer::run_batches(
        connect(&nats.url()).await,
        spec,
        options,
        each(handler),
        stop.clone(),
    ));
    publish(&admin, &outage_victim).await;
    publish(&admin, &poison).await;

    let delivered = tokio::time::timeout(Duration::from_secs(20), seen.recv()).await;
    assert_eq!(
        delivered,
        Ok(Some(outage_deliveries + 1)),
        "handled on the first delivery after the outage, not dead-lettered after 3"
    );
    // The poison message goes to the dead letters after its 3 deliveries; the victim never does.
    let deadline = Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let info = admin
            .get_stream("DEADLETTERS")
            .await
            .expect("DEADLETTERS")
            .info()
            .await
            .expect("stream info")
            .state
            .messages;
        if info >= 1 || Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        letters, 1,
        "only the message that never works is dead-lettered"
    );
    let dead = admin.get_stream("DEADLETTERS").await.expect("DEADLETTERS");
    let letter = dead
        .get_last_raw_message_by_subject(&format!("DEADLETTERS.{DURABLE}"))
        .await;
    let letter = letter.expect("the dead letter");
    let body: EventEnvelope =
        serde_json::from_slice(&letter.payload).expect("the original message");
    assert_eq!(body.event_id, poison.event_id);
    assert_eq!(handled.load(Ordering::SeqCst), 1, "handled once");

    stops_cleanly(&stop, worker).await;
}

/// Stops the loop and waits for it to end cleanly, at most 15 s.
async fn stops_cleanly(
    stop: &CancellationToken,
    worker: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .expect("the loop stops")
        .expect("the loop task")
        .expect("the loop ends cleanly");
}

/// A fresh nats-server with the streams, a client on it and the consumer spec the tests use.
async fn lone_server() -> (
    NatsServer,
    jetstream::Context,
    &'static pipeline_runtime::stream::ConsumerSpec,
) {
    testkit::init_tracing();
    let nats = NatsServer::start().expect("starting nats-server");
    let admin = jetstream::new(connect(&nats.url()).await);
    streams(&admin).await;
    let spec = pipeline_runtime::stream::consumer(DURABLE).expect("a consumer spec");
    (nats, admin, spec)
}

/// Creates the `ORDERS` stream (and `DEADLETTERS`) on a fresh server.
async fn streams(admin: &jetstream::Context) {
    for (name, subjects) in [(STREAM, SUBJECTS), ("DEADLETTERS", "DEADLETTERS.>")] {
        admin
            .create_stream(stream::Config {
                name: name.to_owned(),
                subjects: vec![subjects.to_owned()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("creating the streams");
    }
}

fn event_of(aggregate: &str, version: i64) -> EventEnvelope {
    EventEnvelope {
        aggregate_id: aggregate.to_owned(),
        ..envelope(version)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_orders_go_on_while_one_orders_batch_is_in_hand_and_each_order_keeps_its_order() {
    use std::sync::{Arc, Mutex};

    let (nats, admin, spec) = lone_server().await;

    // The slow order's first message is held until `release` says so; every handled message is
    // recorded as (order, version), in the order the handler finished it.
    let (release, released) = tokio::sync::watch::channel(false);
    let handled: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, i64)>();
    let handler = {
        let handled = Arc::clone(&handled);
        move |batch: Vec<Delivery>| {
            let handled = Arc::clone(&handled);
            let seen_tx = seen_tx.clone();
            let mut released = released.clone();
            async move {
                // A batch is one transaction in order, as the workers' handlers do it.
                let mut outcomes = Vec::new();
                for delivery in batch {
                    let envelope = &delivery.envelope;
                    if envelope.aggregate_id == "slow" && envelope.aggregate_version == 1 {
                        let _ = released.wait_for(|go| *go).await;
                    }
                    let key = (envelope.aggregate_id.clone(), envelope.aggregate_version);
                    handled.lock().expect("lock").push(key.clone());
                    let _ = seen_tx.send(key);
                    outcomes.push(Ok(()));
                }
                outcomes
            }
        }
    };
    let stop = CancellationToken::new();
    let worker = tokio::spawn(consumer::run_batches(
        connect(&nats.url()).await,
        spec,
        Options {
            lanes: 4,
            ..Options::default()
        },
        handler,
        stop.clone(),
    ));

    publish(&admin, &event_of("slow", 1)).await;
    for version in 2..=5 {
        publish(&admin, &event_of("slow", version)).await;
    }
    let others: Vec<String> = (0..16).map(|i| format!("other-{i}")).collect();
    for other in &others {
        publish(&admin, &event_of(other, 1)).await;
    }

    // While the slow order's first message is in hand, other orders are handled...
    let first = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await;
    let first = first
        .expect("another order is handled while the slow one is in hand")
        .expect("a handled message");
    assert!(
        first.0.starts_with("other-"),
        "the first message handled is another order's, not {first:?}"
    );
    // ...but none of the slow order's later messages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !handled
            .lock()
            .expect("lock")
            .iter()
            .any(|(order, _)| order == "slow"),
        "no message of the slow order is handled before its first: {:?}",
        handled.lock().expect("lock")
    );

    release.send(true).expect("the handler listens");
    consumer_reaches(&admin, "the held message is acked once let go", |info| {
        info.num_ack_pending == 0
    })
    .await;
    stops_cleanly(&stop, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_types_the_worker_does_not_handle_are_acked_as_they_arrive_undecoded() {
    use std::sync::{Arc, Mutex};

    let (nats, admin, spec) = lone_server().await;
    let (release, released) = tokio::sync::watch::channel(false);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let seen = Arc::clone(&seen);
        move |batch: Vec<Delivery>| {
            let seen = Arc::clone(&seen);
            let mut released = released.clone();
            async move {
                for delivery in &batch {
                    seen.lock().expect("lock").push(delivery.subject.clone());
                }
                // The batch is held until the test lets it go.
                let _ = released.wait_for(|go| *go).await;
                batch.iter().map(|_| Ok(())).collect::<Vec<_>>()
            }
        }
    };
    let stop = CancellationToken::new();
    let worker = tokio::spawn(consumer::run_batches(
        connect(&nats.url()).await,
        spec,
        Options {
            handles: Some(&["created"]),
            ..Options::default()
        },
        handler,
        stop.clone(),
    ));

    publish(&admin, &envelope(1)).await;
    let approved = EventEnvelope {
        event_type: "approved".to_owned(),
        ..envelope(2)
    };
    for body in [
        serde_json::to_vec(&approved).expect("JSON"),
        b"not an event".to_vec(),
    ] {
        admin
            .publish("ORDERS.approved", body.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    // Expected: while the `created` batch is in hand, both `approved` messages (one of them not
    // even JSON) are acked without the handler and without a dead letter: only the held message
    // waits for its ack.
    consumer_reaches(
        &admin,
        "the other types' messages are acked while the batch is in hand",
        |info| {
            info.num_pending == 0
                && info.num_ack_pending == 1
                && info.ack_floor.stream_sequence == 0
        },
    )
    .await;
    assert_eq!(
        *seen.lock().expect("lock"),
        vec!["ORDERS.created".to_owned()]
    );
    let dead = admin
        .get_stream("DEADLETTERS")
        .await
        .expect("dead letters")
        .info()
        .await
        .expect("dead letters info")
        .state
        .messages;
    assert_eq!(
        dead, 0,
        "another type's undecodable message is not ours to dead-letter"
    );

    release.send(true).expect("the handler listens");
    consumer_reaches(&admin, "the held message is acked once let go", |info| {
        info.num_ack_pending == 0
    })
    .await;
    stops_cleanly(&stop, worker).await;
}

/// Waits (at most 10 s) until the test consumer exists and its info satisfies `reached`; fails
/// with `what`. The worker under test creates the consumer when it binds, which may be after the
/// test's first look.
async fn consumer_reaches(
    admin: &jetstream::Context,
    what: &str,
    reached: impl Fn(&jetstream::consumer::Info) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = admin
            .get_stream(STREAM)
            .await
            .expect("stream")
            .consumer_info(DURABLE)
            .await;
        let seen = match found {
            Ok(info) if reached(&info) => return,
            Ok(info) => format!("{info:?}"),
            Err(err) if err.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                "no consumer yet".to_owned()
            }
            Err(err) => panic!("consumer info: {err}"),
        };
        assert!(Instant::now() < deadline, "{what}: {seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
