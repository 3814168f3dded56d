//! Starts PostgreSQL, nats-server, the event store and the worker for one test.

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

use async_nats::jetstream;
use order_domain::{
    AGGREGATE_TYPE, Money, OrderCreated, OrderEvent, OrderItem, PaymentDebited, payment_id,
};
use pipeline_runtime::eventstore::{EventStoreClient, NewEvent};
use pipeline_runtime::stream::{EventEnvelope, headers};
use querymodelworker::{App, Config};
use sqlx::PgPool;
use testkit::{NatsServer, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
pub const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// How long a test waits for the worker to reach a state.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Stack {
    pub postgres: Postgres,
    pub nats: NatsServer,
    pub orders_url: String,
    pub eventstore_url: String,
    pub events: EventStoreClient,
    pub orders: PgPool,
    _eventstore: Service,
}

/// A service running in a task of this test; stopped gracefully on `stop`, aborted on drop.
pub struct Service {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Service
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (shutdown, stopped) = oneshot::channel();
        Service {
            shutdown: Some(shutdown),
            task: Some(tokio::spawn(run(stopped))),
        }
    }

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

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Stack {
    /// PostgreSQL with migrated `eventstoredb` and `ordersdb`, nats-server with the streams and
    /// consumers, and an event store; the worker is started by [`Stack::worker`].
    pub async fn start() -> Stack {
        testkit::init_tracing();
        let postgres = Postgres::start().expect("PostgreSQL starts");
        let nats = NatsServer::start().expect("nats-server starts");
        let eventstore_db = postgres.url("eventstoredb");
        let orders_url = postgres.url("ordersdb");
        migrate(&eventstore_db, bootstrapper::Context::EventStore).await;
        migrate(&orders_url, bootstrapper::Context::Orders).await;
        let js = jetstream(&nats).await;
        bootstrapper::ensure_streams(&js, 1)
            .await
            .expect("streams created");
        bootstrapper::ensure_consumers(&js)
            .await
            .expect("consumers created");

        let mut config = eventstore::Config::new(
            "127.0.0.1:0".parse().expect("address"),
            &eventstore_db,
            nats.url(),
        );
        config.timeout_ms = 1000;
        config.sweep_interval_ms = 200;
        let app = eventstore::App::build(config)
            .await
            .expect("event store builds");
        let eventstore_url = format!("http://{}", app.local_addr());
        let eventstore = Service::spawn(|stopped| {
            app.run_until_stopped(async move {
                let _ = stopped.await;
            })
        });
        let events = EventStoreClient::connect_lazy(&eventstore_url, Duration::from_secs(5))
            .expect("event store client");
        let orders = PgPool::connect(&orders_url).await.expect("ordersdb");
        Stack {
            postgres,
            nats,
            orders_url,
            eventstore_url,
            events,
            orders,
            _eventstore: eventstore,
        }
    }

    pub fn config(&self) -> Config {
        let mut config = Config::new(self.nats.url(), &self.eventstore_url, &self.orders_url);
        config.max_deliveries = 3;
        config
    }

    /// Starts a worker on the shared consumer.
    pub async fn worker(&self) -> Service {
        let app = App::build(self.config()).await.expect("worker builds");
        Service::spawn(|stopped| {
            app.run_until_stopped(async move {
                let _ = stopped.await;
            })
        })
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream(&self.nats).await
    }

    /// Appends `event` to its order at `expected_version`, with a `traceparent`.
    pub async fn append(&self, event: &OrderEvent, expected_version: i64) -> Uuid {
        let event_id = Uuid::new_v4();
        self.events
            .append(
                NewEvent {
                    event_id,
                    event_type: event.event_type().to_owned(),
                    aggregate_id: event.order_id().to_string(),
                    aggregate_type: AGGREGATE_TYPE.to_owned(),
                    data: event.to_json(),
                    metadata: BTreeMap::from([(
                        headers::TRACEPARENT.to_owned(),
                        TRACEPARENT.to_owned(),
                    )]),
                },
                expected_version,
            )
            .await
            .expect("append succeeds");
        event_id
    }

    /// Appends `events` to a new order, one after the other.
    pub async fn append_all(&self, events: &[OrderEvent]) {
        for (version, event) in (0..).zip(events) {
            self.append(event, version).await;
        }
    }

    /// Waits until the order's row is at `version` at least, and returns it.
    pub async fn wait_for_row(&self, order_id: Uuid, version: i64) -> OrderRow {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(row) = self.row(order_id).await
                && row.version >= version
            {
                return row;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} did not reach version {version} within {PATIENCE:?}: {:?}",
                self.row(order_id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn row(&self, order_id: Uuid) -> Option<OrderRow> {
        row(&self.orders, order_id).await
    }

    /// Every message on the ORDERS stream, in stream order, once it holds `count` of them.
    pub async fn stream_messages(&self, count: u64) -> Vec<jetstream::message::StreamMessage> {
        let js = self.jetstream().await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut stream = js.get_stream("ORDERS").await.expect("stream exists");
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

    /// Waits until the worker's consumer has acked or terminated everything on the stream.
    pub async fn wait_until_consumed(&self) {
        let js = self.jetstream().await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut stream = js.get_stream("ORDERS").await.expect("stream exists");
            let last = stream
                .info()
                .await
                .expect("stream info")
                .state
                .last_sequence;
            let info = stream
                .consumer_info("querymodelworker")
                .await
                .expect("consumer info");
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence >= last
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker did not consume the stream: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn migrate(url: &str, context: bootstrapper::Context) {
    bootstrapper::ensure_database(url)
        .await
        .expect("database created");
    let pool = PgPool::connect(url).await.expect("connect");
    bootstrapper::migrate(context, &pool)
        .await
        .expect("migrations run");
    pool.close().await;
}

async fn jetstream(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    jetstream::new(client)
}

/// The columns of a read model row that tests look at.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OrderRow {
    pub status: String,
    pub version: i64,
    pub refunded: bool,
    pub reason: Option<String>,
    pub trace_id: Option<String>,
    pub amount: rust_decimal::Decimal,
    pub updated_at: time::OffsetDateTime,
}

pub async fn row(pool: &PgPool, order_id: Uuid) -> Option<OrderRow> {
    sqlx::query_as(
        "SELECT status, version, refunded, reason, trace_id, amount, updated_at
           FROM orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .expect("read the row")
}

/// Parses the body of a stream message.
pub fn envelope(message: &jetstream::message::StreamMessage) -> EventEnvelope {
    serde_json::from_slice(&message.payload).expect("an event envelope")
}

// ---- order events ----

pub fn money(text: &str) -> Money {
    Money::from_str(text).expect("an amount")
}

/// A new order of 2 × 12.50 + 3 × 0.10 = 25.30.
pub fn created() -> OrderCreated {
    let items = vec![
        OrderItem {
            code: "p1".into(),
            name: "Pizza".into(),
            unit_price: money("12.50"),
            quantity: 2,
        },
        OrderItem {
            code: "d1".into(),
            name: "Mint".into(),
            unit_price: money("0.10"),
            quantity: 3,
        },
    ];
    OrderCreated {
        order_id: Uuid::new_v4(),
        customer_id: "c1".into(),
        restaurant_id: "r1".into(),
        order_items: items,
        amount: money("25.30"),
        created_on: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("whole seconds"),
    }
}

pub fn debited(order: &OrderCreated) -> OrderEvent {
    OrderEvent::PaymentDebited(PaymentDebited {
        order_id: order.order_id,
        customer_id: order.customer_id.clone(),
        amount: order.amount,
        payment_id: payment_id(order.order_id),
    })
}

pub fn approved(order: &OrderCreated) -> OrderEvent {
    OrderEvent::Approved(order_domain::Approved {
        order_id: order.order_id,
    })
}

pub fn rejected(order: &OrderCreated) -> OrderEvent {
    OrderEvent::Rejected(order_domain::Rejected {
        order_id: order.order_id,
        reason: "restaurant closed".into(),
    })
}

pub fn payment_failed(order: &OrderCreated) -> OrderEvent {
    OrderEvent::PaymentFailed(order_domain::PaymentFailed {
        order_id: order.order_id,
        customer_id: order.customer_id.clone(),
        amount: order.amount,
        reason: order_domain::INSUFFICIENT_FUNDS.into(),
    })
}

pub fn cancelled(order: &OrderCreated) -> OrderEvent {
    OrderEvent::Cancelled(order_domain::Cancelled {
        order_id: order.order_id,
        reason: "changed my mind".into(),
    })
}

pub fn refunded(order: &OrderCreated) -> OrderEvent {
    OrderEvent::PaymentRefunded(order_domain::PaymentRefunded {
        order_id: order.order_id,
        customer_id: order.customer_id.clone(),
        amount: order.amount,
        payment_id: payment_id(order.order_id),
    })
}
