#![doc = include_str!("../README.md")]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use async_nats::jetstream;
use order_domain::{Cancelled, Money, Order, OrderCreated, OrderEvent, OrderItem, OrderStatus};
use pipeline_runtime::eventstore::EventStoreClient;
use pipeline_runtime::orders::{self, Cause, History};
use pipeline_runtime::stream::{
    CONSUMERS, EventEnvelope, STREAM, dead_letter_stream_config, orders_stream_config,
};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use testkit::{CutProxy, NatsServer, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// What a test's stack holds besides `eventstoredb`, and how its event store is tuned.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Databases created and migrated next to `eventstoredb`.
    pub databases: &'static [Schema],
    /// Creates the workers' consumers next to the streams.
    pub consumers: bool,
    /// The event store's `timeout_ms`.
    pub eventstore_timeout_ms: u64,
    /// The event store's `sweep_interval_ms`, its default when `None`.
    pub sweep_interval_ms: Option<u64>,
    /// The connect timeout of [`Stack::store`].
    pub client_timeout: Duration,
    /// How long the `wait_*` helpers wait for the pipeline to reach a state.
    pub patience: Duration,
    /// The event store reaches its database through a [`CutProxy`] ([`Stack::eventstore_cut`]),
    /// so a test can break its connections.
    pub cut_eventstore_db: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            databases: &[],
            consumers: true,
            eventstore_timeout_ms: 2000,
            sweep_interval_ms: Some(200),
            client_timeout: Duration::from_secs(5),
            patience: Duration::from_secs(30),
            cut_eventstore_db: false,
        }
    }
}

/// One test's world; everything stops when it is dropped.
pub struct Stack {
    pub postgres: Postgres,
    pub nats: NatsServer,
    /// The event store's gRPC address, `http://127.0.0.1:PORT`.
    pub eventstore_url: String,
    /// A client of the event store.
    pub store: EventStoreClient,
    /// How long the `wait_*` helpers wait.
    pub patience: Duration,
    /// Between the event store and its database, when [`Setup::cut_eventstore_db`] asked for it.
    pub eventstore_cut: Option<CutProxy>,
    _eventstore: Running,
}

/// A context's database in a test's stack: its name and the migrations of the crate that owns it.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    pub database: &'static str,
    pub migrator: &'static Migrator,
}

/// The event store's database, in every stack.
pub const EVENTSTORE: Schema = Schema {
    database: "eventstoredb",
    migrator: &eventstore::MIGRATOR,
};

/// The read model's database.
pub const ORDERS: Schema = Schema {
    database: "ordersdb",
    migrator: &order_readmodel::MIGRATOR,
};

impl Schema {
    /// Creates the database on `postgres`, migrates it and returns its URL.
    pub async fn create(self, postgres: &Postgres) -> String {
        let url = postgres
            .create_database(self.database)
            .await
            .expect("database created");
        self.migrate(&url).await;
        url
    }

    /// Runs the migrations on the database at `url`, which exists.
    pub async fn migrate(self, url: &str) {
        let pool = PgPool::connect(url).await.expect("connect");
        self.migrator.run(&pool).await.expect("migrations run");
        pool.close().await;
    }
}

/// Creates the `ORDERS` and `DEADLETTERS` streams, and with `consumers` the workers' durable
/// consumers, from their definitions in `pipeline_runtime::stream` (which the bootstrapper applies).
pub async fn create_streams(js: &jetstream::Context, consumers: bool) {
    for config in [orders_stream_config(1), dead_letter_stream_config(1)] {
        js.create_stream(config).await.expect("stream created");
    }
    if consumers {
        let stream = js.get_stream(STREAM).await.expect("stream");
        for spec in CONSUMERS {
            stream
                .create_consumer(spec.config_for(&js.client()))
                .await
                .expect("consumer created");
        }
    }
}

impl Stack {
    /// Servers, `eventstoredb`, streams and consumers, and an event store.
    pub async fn start() -> Stack {
        Stack::start_with(Setup::default()).await
    }

    /// Servers, databases, streams and consumers, and an event store, as `setup` says.
    pub async fn start_with(setup: Setup) -> Stack {
        testkit::init_tracing();
        let postgres = Postgres::start().expect("PostgreSQL starts");
        let nats = NatsServer::start().expect("nats-server starts");
        let eventstore_db = EVENTSTORE.create(&postgres).await;
        for schema in setup.databases {
            schema.create(&postgres).await;
        }
        create_streams(&connect(&nats).await, setup.consumers).await;

        let eventstore_cut = if setup.cut_eventstore_db {
            Some(
                CutProxy::to_port(postgres.port())
                    .await
                    .expect("cut proxy starts"),
            )
        } else {
            None
        };
        let eventstore_db = match &eventstore_cut {
            Some(proxy) => proxy.url_for(&eventstore_db),
            None => eventstore_db,
        };
        let mut config = eventstore::Config::new(
            "127.0.0.1:0".parse().expect("address"),
            &eventstore_db,
            nats.url(),
        );
        config.timeout_ms = setup.eventstore_timeout_ms;
        if let Some(sweep_interval_ms) = setup.sweep_interval_ms {
            config.sweep_interval_ms = sweep_interval_ms;
        }
        let app = eventstore::App::build(config)
            .await
            .expect("event store builds");
        let eventstore_url = format!("http://{}", app.local_addr());
        let eventstore = Running::spawn(|stopped| app.run_until_stopped(stopped));
        let store = EventStoreClient::connect_lazy(&eventstore_url, setup.client_timeout)
            .expect("event store client");
        Stack {
            postgres,
            nats,
            eventstore_url,
            store,
            patience: setup.patience,
            eventstore_cut,
            _eventstore: eventstore,
        }
    }

    /// The URL of the database of `schema`.
    pub fn database_url(&self, schema: Schema) -> String {
        self.postgres.url(schema.database)
    }

    /// A pool on the database of `schema`.
    pub async fn pool(&self, schema: Schema) -> PgPool {
        PgPool::connect(&self.database_url(schema))
            .await
            .expect("connect")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        connect(&self.nats).await
    }

    /// Appends `event` to its order, expecting `expected_version`; returns the event id.
    pub async fn append(&self, event: &OrderEvent, expected_version: i64) -> Uuid {
        self.append_with(event, expected_version, BTreeMap::new())
            .await
    }

    /// [`Stack::append`] with `metadata`.
    pub async fn append_with(
        &self,
        event: &OrderEvent,
        expected_version: i64,
        metadata: BTreeMap<String, String>,
    ) -> Uuid {
        let event_id = Uuid::new_v4();
        let mut append = orders::new_event(event_id, event, Cause::Request);
        append.metadata = metadata;
        self.store
            .append(append, expected_version)
            .await
            .expect("append succeeds");
        event_id
    }

    /// Places an order of `amount` for `customer`; returns its id.
    pub async fn place(&self, customer: &str, amount: &str) -> Uuid {
        let order_id = Uuid::new_v4();
        let amount = money(amount);
        let created = OrderCreated {
            order_id,
            customer_id: customer.to_owned(),
            restaurant_id: "r1".to_owned(),
            order_items: vec![OrderItem {
                code: "p1".to_owned(),
                name: "Pizza".to_owned(),
                unit_price: amount,
                quantity: 1,
            }],
            amount,
            created_on: time::OffsetDateTime::now_utc(),
        };
        self.append(&created.into(), 0).await;
        order_id
    }

    /// Cancels a Pending or Paid order at its current version.
    pub async fn cancel(&self, order_id: Uuid) {
        let order = self.order(order_id).await;
        let cancelled = Cancelled {
            order_id,
            reason: "changed my mind".to_owned(),
        };
        self.append(&cancelled.into(), order.version).await;
    }

    /// Debits a Pending order, as paymentworker would; returns the event id.
    pub async fn debit(&self, order_id: Uuid) -> Uuid {
        let order = self.order(order_id).await;
        let event = order
            .settle_payment(order_domain::payment_id(order_id), Some(order.amount))
            .expect("a Pending order is debited");
        self.append(&event, order.version).await
    }

    /// The stored events of an order.
    pub async fn history(&self, order_id: Uuid) -> Vec<EventEnvelope> {
        self.store
            .events(&order_id.to_string())
            .await
            .expect("events read")
    }

    /// The order folded from the event store.
    pub async fn order(&self, order_id: Uuid) -> Order {
        History::load(&self.store, &order_id.to_string())
            .await
            .expect("the order is read back")
            .expect("the order exists")
            .order
    }

    /// Waits until the order satisfies `done`, at most [`Stack::patience`].
    pub async fn wait_for(
        &self,
        order_id: Uuid,
        what: &str,
        done: impl Fn(&Order) -> bool,
    ) -> Order {
        let patience = self.patience;
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let order = self.order(order_id).await;
            if done(&order) {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} is not {what} after {patience:?}: {order:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_status(&self, order_id: Uuid, status: OrderStatus) -> Order {
        self.wait_for(order_id, status.as_str(), |order| order.status == status)
            .await
    }

    /// Waits until `consumer` handled everything there is, the events its handling appended
    /// included: the consumer idle ([`testkit::jetstream::wait_consumer_idle`]: nothing pending,
    /// nothing unacked), then the event store's outbox empty (everything appended is on the
    /// stream), and the stream no longer than before the consumer was seen idle. Workers ack after
    /// their append committed, so at that fixed point nothing the consumer did is still on its way.
    pub async fn wait_idle(&self, consumer: &str) {
        self.wait_idle_past(consumer, 0).await;
    }

    /// [`Stack::wait_idle`], and the consumer delivered and acked the message at stream sequence
    /// `seen` (e.g. the copy [`Stack::publish_copy_of_last`] published): a message it never got
    /// fails the wait rather than passing it.
    pub async fn wait_idle_past(&self, consumer: &str, seen: u64) {
        let patience = self.patience;
        let js = self.jetstream().await;
        let eventstore_db = self.pool(EVENTSTORE).await;
        let deadline = tokio::time::Instant::now() + patience;
        let last_sequence = || async {
            let mut stream = js.get_stream(STREAM).await.expect("stream");
            stream
                .info()
                .await
                .expect("stream info")
                .state
                .last_sequence
        };
        loop {
            let before = last_sequence().await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            testkit::jetstream::wait_consumer_idle(&js, STREAM, consumer, seen, left).await;
            loop {
                let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                    .fetch_one(&eventstore_db)
                    .await
                    .expect("outbox rows counted");
                if outbox == 0 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the outbox still holds {outbox} events after {patience:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if last_sequence().await == before {
                eventstore_db.close().await;
                return;
            }
            // Something was published meanwhile (maybe for this consumer): look again.
        }
    }

    /// Publishes a copy of the last message on `subject` under another `Nats-Msg-Id`: the same event
    /// delivered twice. Returns the copy's stream sequence, for [`Stack::wait_idle_past`].
    pub async fn publish_copy_of_last(&self, subject: &str) -> u64 {
        let js = self.jetstream().await;
        let stream = js.get_stream(STREAM).await.expect("stream");
        let deadline = tokio::time::Instant::now() + self.patience;
        let original = loop {
            match stream.get_last_raw_message_by_subject(subject).await {
                Ok(message) => break message,
                Err(err) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "nothing on {subject}: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut headers = original.headers.clone();
        headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
        js.publish_with_headers(subject.to_owned(), headers, original.payload.clone())
            .await
            .expect("publish")
            .await
            .expect("stream ack")
            .sequence
    }

    /// Every message on the `ORDERS` stream, in stream order, once it holds `count` of them.
    pub async fn stream_messages(&self, count: u64) -> Vec<jetstream::message::StreamMessage> {
        let js = self.jetstream().await;
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut stream = js.get_stream(STREAM).await.expect("stream exists");
        loop {
            let info = stream.info().await.expect("stream info").state.clone();
            if info.messages >= count {
                let mut messages = Vec::new();
                for seq in info.first_sequence..=info.last_sequence {
                    if let Ok(message) = stream.get_raw_message(seq).await {
                        messages.push(message);
                    }
                }
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream holds {} messages, expected {count}",
                info.messages
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn connect(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    jetstream::new(client)
}

/// Parses an amount.
pub fn money(amount: &str) -> Money {
    amount.parse().expect("an amount")
}

/// Parses the body of a stream message.
pub fn envelope(message: &jetstream::message::StreamMessage) -> EventEnvelope {
    serde_json::from_slice(&message.payload).expect("an event envelope")
}

/// A service running in a task of the test; stopped gracefully by `stop`, aborted on drop.
pub struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The shutdown future a [`Running`] service is given: resolves on `stop` (or on drop).
pub struct Stopped(oneshot::Receiver<()>);

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Running {
    /// Spawns `run(stopped)`, e.g. `Running::spawn(|stopped| app.run_until_stopped(stopped))`.
    pub fn spawn<F, Fut>(run: F) -> Running
    where
        F: FnOnce(Stopped) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (shutdown, stopped) = oneshot::channel();
        Running {
            shutdown: Some(shutdown),
            task: Some(tokio::spawn(run(Stopped(stopped)))),
        }
    }

    /// Graceful stop: returns when the service has finished.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("stops within its grace period")
                .expect("task joins")
                .expect("stops without error");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
