use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use testkit::NatsCluster;

use crate::support::{assert_cleaned_up_after_a_panic, port_accepts};

/// A client of the whole cluster, as the services connect (every node listed).
async fn connect(cluster: &NatsCluster) -> jetstream::Context {
    let servers: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|url| url.parse().expect("a node URL"))
        .collect();
    let client = async_nats::connect(servers.as_slice())
        .await
        .expect("connecting to the cluster");
    jetstream::new(client)
}

/// Publishes until JetStream acknowledges (a leader election may be under way), at most 30 s;
/// returns the stream sequence.
async fn publish_until_acked(js: &jetstream::Context, subject: &str, payload: &'static str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The message id makes a retry of a publish that was stored but not acknowledged a
        // duplicate JetStream drops, as the outbox relay's.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", payload);
        let attempt = async {
            js.publish_with_headers(subject.to_owned(), headers, payload.into())
                .await?
                .await
                .map_err(anyhow::Error::from)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(ack)) => return ack.sequence,
            Ok(Err(error)) => tracing::info!(%error, "publish not acknowledged yet"),
            Err(_) => tracing::info!("publish timed out"),
        }
        assert!(
            Instant::now() < deadline,
            "no acknowledgement for {payload} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node index (0..3) of the server named `testkit-nats-<i>`.
fn node_of(server_name: &str) -> usize {
    server_name
        .strip_prefix("testkit-nats-")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("{server_name} is not a testkit node"))
}

/// Stream info until `done` holds, at most 30 s.
async fn wait_stream(
    js: &jetstream::Context,
    name: &str,
    what: &str,
    done: impl Fn(&stream::Info) -> bool,
) -> stream::Info {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = match js.get_stream(name).await {
            Ok(mut stream) => stream.info().await.ok().cloned(),
            Err(_) => None,
        };
        if let Some(info) = info {
            if done(&info) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "stream {name} never {what}: {:?}",
                info.cluster
            );
        } else {
            assert!(Instant::now() < deadline, "stream {name} never answered");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_stream_at_three_replicas_survives_a_killed_node_which_then_catches_up() {
    testkit::init_tracing();
    let mut cluster = NatsCluster::start().expect("starting the cluster");
    assert_eq!(cluster.size(), 3);
    assert_eq!(cluster.urls().split(',').count(), 3, "{}", cluster.urls());
    assert!(
        cluster.meta_leader().is_some(),
        "JetStream has a meta leader once start() returns\n{}",
        cluster.logs()
    );

    let js = connect(&cluster).await;
    js.create_stream(stream::Config {
        name: "CLUSTERED".to_owned(),
        subjects: vec!["clustered.>".to_owned()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("creating a stream at three replicas");
    assert_eq!(publish_until_acked(&js, "clustered.one", "one").await, 1);
    let info = wait_stream(
        &js,
        "CLUSTERED",
        "had a leader and two current replicas",
        |info| {
            info.cluster.as_ref().is_some_and(|c| {
                c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current)
            })
        },
    )
    .await;
    assert_eq!(info.config.num_replicas, 3);
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("the stream has a leader");

    // Kill the stream's leader: the two others elect a new one and keep taking messages.
    let killed = node_of(&leader);
    cluster.kill(killed).expect("killing the leader's node");
    assert!(!cluster.is_running(killed));
    assert!(!port_accepts(cluster.port(killed)));
    assert_eq!(publish_until_acked(&js, "clustered.two", "two").await, 2);
    let info = wait_stream(&js, "CLUSTERED", "elected another leader", |info| {
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.as_deref())
            .is_some_and(|l| l != leader)
    })
    .await;
    assert_eq!(info.state.messages, 2, "both messages are on the stream");

    // The node comes back and catches up: every replica current, nothing lost.
    cluster
        .start_again(killed)
        .expect("starting the killed node again");
    assert!(cluster.is_running(killed));
    cluster.health(killed).expect("the node is healthy again");
    let info = wait_stream(&js, "CLUSTERED", "had all three copies current", |info| {
        info.cluster.as_ref().is_some_and(|c| {
            c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current)
        })
    })
    .await;
    assert_eq!(info.state.messages, 2, "{:?}", info.state);
    assert!(
        cluster.log(killed).matches("Server is ready").count() >= 2,
        "node {killed} started twice:\n{}",
        cluster.log(killed)
    );
}

#[test]
fn the_repository_cluster_configuration_starts_three_named_nodes() {
    testkit::init_tracing();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../nats-cluster");
    let configs: Vec<PathBuf> = (1..=3)
        .map(|n| root.join(format!("node-{n}.conf")))
        .collect();
    let cluster = NatsCluster::start_with_configs(&configs).expect("starting from the files");
    let leader = cluster.meta_leader().expect("a meta leader");
    assert!(leader.starts_with("orders-nats-"), "{leader}");
    for i in 0..3 {
        let log = cluster.log(i);
        assert!(
            log.contains(&format!("orders-nats-{}", i + 1)),
            "node {i} is named by its file:\n{log}"
        );
        // The file's relative store_dir lands in the node's own folder, not in the repository.
        let store = cluster
            .dir()
            .join(format!("node-{i}/.stack/nats-{}", i + 1));
        assert!(store.is_dir(), "{} is missing", store.display());
    }
}

#[test]
fn dropping_the_cluster_removes_its_folder_and_closes_every_port() {
    let cluster = NatsCluster::start().expect("starting the cluster");
    let dir = cluster.dir().to_path_buf();
    let ports: Vec<u16> = (0..3)
        .flat_map(|i| [cluster.port(i), cluster.http_port(i)])
        .collect();

    drop(cluster);
    assert!(!dir.exists(), "{} is still there", dir.display());
    for port in ports {
        assert!(!port_accepts(port), "port {port} is still open");
    }
}

#[test]
fn the_cluster_is_cleaned_up_when_a_test_panics() {
    assert_cleaned_up_after_a_panic(|| {
        let cluster = NatsCluster::start().expect("starting the cluster");
        let (dir, port) = (cluster.dir().to_path_buf(), cluster.port(0));
        (Box::new(cluster), dir, port)
    });
}
