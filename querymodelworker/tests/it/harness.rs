//! Starts PostgreSQL, nats-server, the event store and the worker for one test.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;

use order_domain::{OrderCreated, OrderEvent, OrderItem, PaymentDebited, payment_id};
use order_readmodel::OrderRow;
use pipeline_harness::Setup;
use pipeline_runtime::stream::headers;
use querymodelworker::{App, Config};
use sqlx::PgPool;
use uuid::Uuid;

pub use pipeline_harness::{ORDERS, Running as Service, Schema, envelope, money};

pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
pub const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// How long a test waits for the worker to reach a state.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Stack {
    base: pipeline_harness::Stack,
    pub orders_url: String,
    pub orders: PgPool,
}

impl Stack {
    /// PostgreSQL with migrated `eventstoredb` and `ordersdb`, nats-server with the streams and
    /// consumers, and an event store; the worker is started by [`Stack::worker`].
    pub async fn start() -> Stack {
        let base = pipeline_harness::Stack::start_with(Setup {
            databases: &[ORDERS],
            eventstore_timeout_ms: 1000,
            patience: PATIENCE,
            ..Setup::default()
        })
        .await;
        let orders_url = base.database_url(ORDERS);
        let orders = base.pool(ORDERS).await;
        Stack {
            base,
            orders_url,
            orders,
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
        Service::spawn(|stopped| app.run_until_stopped(stopped))
    }

    /// Appends `event` to its order at `expected_version`, with a `traceparent`.
    pub async fn append(&self, event: &OrderEvent, expected_version: i64) -> Uuid {
        let metadata = BTreeMap::from([(headers::TRACEPARENT.to_owned(), TRACEPARENT.to_owned())]);
        self.base
            .append_with(event, expected_version, metadata)
            .await
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

impl Deref for Stack {
    type Target = pipeline_harness::Stack;

    fn deref(&self) -> &pipeline_harness::Stack {
        &self.base
    }
}

/// Every row of both read-model tables, every column, as text, in a stable order.
pub async fn dump(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    let orders: Vec<(String,)> =
        sqlx::query_as("SELECT row_to_json(o)::text FROM orders o ORDER BY order_id")
            .fetch_all(pool)
            .await
            .expect("orders");
    let items: Vec<(String,)> =
        sqlx::query_as("SELECT row_to_json(i)::text FROM order_items i ORDER BY order_id, line_no")
            .fetch_all(pool)
            .await
            .expect("items");
    (
        orders.into_iter().map(|(r,)| r).collect(),
        items.into_iter().map(|(r,)| r).collect(),
    )
}

pub async fn row(pool: &PgPool, order_id: Uuid) -> Option<OrderRow> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_readmodel::order_columns!(),
        " FROM orders WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .expect("read the row")
}

// ---- order events ----

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
