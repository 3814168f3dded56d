//! Starts PostgreSQL, nats-server and event store instances for one test.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use eventstore::{App, Config};
use eventstore_proto::event_store_client::EventStoreClient;
use eventstore_proto::{
    AppendOutcome, CreateEventRequest, CreateEventResponse, CreateEventsRequest, Event,
};
use pipeline_runtime::stream::orders_stream_config;
use testkit::{NatsServer, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use uuid::Uuid;

pub type Client = EventStoreClient<Channel>;

pub struct Stack {
    pub postgres: Postgres,
    pub nats: NatsServer,
    pub database_url: String,
}

/// A running event store instance; stopped gracefully on `stop`, aborted on drop.
pub struct Instance {
    pub client: Client,
    pub addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    /// PostgreSQL with a migrated `eventstoredb`, nats-server with the `ORDERS` stream.
    pub async fn start() -> Stack {
        testkit::init_tracing();
        let postgres = Postgres::start().expect("PostgreSQL starts");
        let nats = NatsServer::start().expect("nats-server starts");
        let database_url = postgres
            .create_database("eventstoredb")
            .await
            .expect("database created");
        let pool = sqlx::PgPool::connect(&database_url).await.expect("connect");
        eventstore::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations run");
        pool.close().await;
        let stack = Stack {
            postgres,
            nats,
            database_url,
        };
        stack
            .jetstream()
            .await
            .create_stream(orders_stream_config(1))
            .await
            .expect("stream created");
        stack
    }

    pub fn config(&self) -> Config {
        self.config_with_database(&self.database_url)
    }

    /// [`Stack::config`] with another way to the database (a proxy).
    pub fn config_with_database(&self, database_url: &str) -> Config {
        let mut config = Config::new(
            "127.0.0.1:0".parse().expect("address"),
            database_url,
            self.nats.url(),
        );
        config.timeout_ms = 1000;
        config.sweep_interval_ms = 200;
        config
    }

    pub async fn instance(&self) -> Instance {
        Instance::start(self.config()).await
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.nats.url())
            .await
            .expect("connect to NATS");
        jetstream::new(client)
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database_url)
            .await
            .expect("connect")
    }

    /// Every message on the ORDERS stream, in stream order.
    pub async fn stream_messages(&self) -> Vec<jetstream::message::StreamMessage> {
        let js = self.jetstream().await;
        let mut stream = js.get_stream("ORDERS").await.expect("stream exists");
        let info = stream.info().await.expect("stream info");
        let (first, last, count) = (
            info.state.first_sequence,
            info.state.last_sequence,
            info.state.messages,
        );
        let mut messages = Vec::new();
        if count == 0 {
            return messages;
        }
        for seq in first..=last {
            messages.push(stream.get_raw_message(seq).await.expect("message"));
        }
        messages
    }

    /// Waits until the stream holds `count` messages (or fails after `timeout`).
    pub async fn wait_for_stream_count(&self, count: u64, timeout: Duration) {
        let js = self.jetstream().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut stream = js.get_stream("ORDERS").await.expect("stream exists");
            let seen = stream.info().await.expect("stream info").state.messages;
            if seen >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream holds {seen} messages after {timeout:?}, expected {count}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every outbox row was published and deleted (or fails after `timeout`).
    pub async fn wait_for_empty_outbox(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.outbox_len().await;
            if left == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the outbox still holds {left} rows after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rows still waiting in the outbox.
    pub async fn outbox_len(&self) -> i64 {
        let pool = self.pool().await;
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    }
}

impl Instance {
    pub async fn start(config: Config) -> Instance {
        let app = App::build(config).await.expect("event store builds");
        let addr = app.local_addr();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let client = EventStoreClient::connect(format!("http://{addr}"))
            .await
            .expect("gRPC connects");
        Instance {
            client,
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Graceful stop: waits for the service to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("stops within its grace period")
                .expect("task joins")
                .expect("stops without error");
        }
    }

    /// A crash: the service is dropped mid-flight, nothing is drained.
    pub fn crash(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An `ORDERS.created`-like event for `aggregate` with some data.
pub fn event(aggregate: &str, event_type: &str, data: serde_json::Value) -> Event {
    Event {
        event_id: Uuid::new_v4().to_string(),
        event_type: event_type.into(),
        aggregate_id: aggregate.into(),
        aggregate_type: "order".into(),
        event_data: data.to_string(),
        stream: "ORDERS".into(),
        metadata: HashMap::from([
            (
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            ),
            ("correlation_id".to_owned(), aggregate.to_owned()),
        ]),
        ..Default::default()
    }
}

pub async fn append(
    client: &mut Client,
    event: Event,
    expected_version: i64,
) -> Result<CreateEventResponse, tonic::Status> {
    client
        .create_event(CreateEventRequest {
            event: Some(event),
            expected_version,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Appends events (each with its expected version) in one `CreateEvents` call.
pub async fn append_all(
    client: &mut Client,
    events: Vec<(Event, i64)>,
) -> Result<Vec<AppendOutcome>, tonic::Status> {
    client
        .create_events(CreateEventsRequest {
            events: events
                .into_iter()
                .map(|(event, expected_version)| CreateEventRequest {
                    event: Some(event),
                    expected_version,
                })
                .collect(),
        })
        .await
        .map(|response| response.into_inner().outcomes)
}

/// Appends `n` events to a new aggregate; returns the aggregate id.
pub async fn append_chain(client: &mut Client, n: i64) -> String {
    let aggregate = Uuid::new_v4().to_string();
    for version in 0..n {
        append(
            client,
            event(&aggregate, "created", serde_json::json!({ "n": version })),
            version,
        )
        .await
        .expect("append succeeds");
    }
    aggregate
}
