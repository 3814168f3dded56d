//! One test's world: PostgreSQL and nats-server of its own, bootstrapped; the event store running
//! in-process; helpers to place orders, read them back and start the worker.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use order_domain::{
    AGGREGATE_TYPE, Cancelled, Money, Order, OrderCreated, OrderEvent, OrderItem, OrderStatus,
};
use pipeline_runtime::eventstore::{EventStoreClient, NewEvent};
use pipeline_runtime::stream::EventEnvelope;
use testkit::{NatsServer, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a test waits for the pipeline to reach an expected state.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Stack {
    _postgres: Postgres,
    pub nats: NatsServer,
    pub payments_url: String,
    pub eventstore_url: String,
    pub store: EventStoreClient,
    pub payments: sqlx::PgPool,
    _eventstore: Running,
}

/// A service running in-process; stopped gracefully by `stop`, aborted on drop.
pub struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn spawn<F, Fut>(run: F) -> Running
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (shutdown, stopped) = oneshot::channel();
        Running {
            shutdown: Some(shutdown),
            task: Some(tokio::spawn(run(stopped))),
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

impl Stack {
    /// Servers, databases, streams and consumers, and an event store.
    pub async fn start() -> Stack {
        testkit::init_tracing();
        let postgres = Postgres::start().expect("PostgreSQL starts");
        let nats = NatsServer::start().expect("nats-server starts");
        let eventstore_db = postgres.url("eventstoredb");
        let payments_url = postgres.url("paymentsdb");
        for (context, url) in [
            (bootstrapper::Context::EventStore, &eventstore_db),
            (bootstrapper::Context::Payments, &payments_url),
        ] {
            bootstrapper::ensure_database(url)
                .await
                .expect("database created");
            let pool = sqlx::PgPool::connect(url).await.expect("connect");
            bootstrapper::migrate(context, &pool)
                .await
                .expect("migrations run");
            pool.close().await;
        }
        let js = jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
        bootstrapper::ensure_streams(&js, 1)
            .await
            .expect("streams created");
        bootstrapper::ensure_consumers(&js)
            .await
            .expect("consumers created");

        let mut config = eventstore::Config::new(
            "127.0.0.1:0".parse().expect("addr"),
            &eventstore_db,
            nats.url(),
        );
        config.timeout_ms = 2000;
        config.sweep_interval_ms = 200;
        let app = eventstore::App::build(config)
            .await
            .expect("event store builds");
        let eventstore_url = format!("http://{}", app.local_addr());
        let eventstore = Running::spawn(|stopped| {
            app.run_until_stopped(async move {
                let _ = stopped.await;
            })
        });
        let store = EventStoreClient::connect_lazy(&eventstore_url, Duration::from_secs(5))
            .expect("event store client");
        let payments = sqlx::PgPool::connect(&payments_url).await.expect("connect");
        Stack {
            _postgres: postgres,
            nats,
            payments_url,
            eventstore_url,
            store,
            payments,
            _eventstore: eventstore,
        }
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(
            async_nats::connect(self.nats.url())
                .await
                .expect("connect to NATS"),
        )
    }

    /// Appends `event` to its order, expecting `expected_version`; returns the event id.
    pub async fn append(&self, event: OrderEvent, expected_version: i64) -> Uuid {
        let event_id = Uuid::new_v4();
        self.store
            .append(
                NewEvent {
                    event_id,
                    event_type: event.event_type().to_owned(),
                    aggregate_id: event.order_id().to_string(),
                    aggregate_type: AGGREGATE_TYPE.to_owned(),
                    data: event.to_json(),
                    metadata: Default::default(),
                },
                expected_version,
            )
            .await
            .expect("append succeeds");
        event_id
    }

    /// Places an order of `amount` for `customer`; returns its id.
    pub async fn place(&self, customer: &str, amount: &str) -> Uuid {
        let order_id = Uuid::new_v4();
        let amount: Money = amount.parse().expect("amount");
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
        self.append(created.into(), 0).await;
        order_id
    }

    /// Cancels a Pending or Paid order at its current version.
    pub async fn cancel(&self, order_id: Uuid) {
        let order = self.order(order_id).await;
        self.append(
            Cancelled {
                order_id,
                reason: "changed my mind".to_owned(),
            }
            .into(),
            order.version,
        )
        .await;
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
        let events: Vec<OrderEvent> = self
            .history(order_id)
            .await
            .iter()
            .map(|e| OrderEvent::decode(&e.event_type, &e.event_data).expect("decodes"))
            .collect();
        Order::fold(&events).expect("folds").expect("exists")
    }

    /// Waits until the order satisfies `done`, at most [`PATIENCE`].
    pub async fn wait_for(
        &self,
        order_id: Uuid,
        what: &str,
        done: impl Fn(&Order) -> bool,
    ) -> Order {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let order = self.order(order_id).await;
            if done(&order) {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} is not {what} after {PATIENCE:?}: {order:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_status(&self, order_id: Uuid, status: OrderStatus) -> Order {
        self.wait_for(order_id, status.as_str(), |order| order.status == status)
            .await
    }

    /// Waits until `consumer` has acked everything on the stream and nothing new arrived for a
    /// moment (the events the worker appended were published and handled too).
    pub async fn wait_idle(&self, consumer: &str) {
        let js = self.jetstream().await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut quiet_since: Option<tokio::time::Instant> = None;
        let mut last_seen = 0;
        loop {
            let mut stream = js.get_stream("ORDERS").await.expect("stream");
            let last = stream
                .info()
                .await
                .expect("stream info")
                .state
                .last_sequence;
            let info = stream.consumer_info(consumer).await.expect("consumer info");
            // Nothing left to deliver on the consumer's subjects, nothing un-acked.
            let caught_up = info.num_pending == 0 && info.num_ack_pending == 0;
            if caught_up && last == last_seen {
                let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= Duration::from_millis(700) {
                    return;
                }
            } else {
                quiet_since = None;
            }
            last_seen = last;
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer {consumer} still busy after {PATIENCE:?}: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes a copy of the last message on `subject` under another `Nats-Msg-Id`: the same event
    /// delivered twice.
    pub async fn publish_copy_of_last(&self, subject: &str) {
        let js = self.jetstream().await;
        let stream = js.get_stream("ORDERS").await.expect("stream");
        let deadline = tokio::time::Instant::now() + PATIENCE;
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
            .expect("stream ack");
    }
}

pub fn money(amount: &str) -> Money {
    amount.parse().expect("amount")
}
