//! One test's world: PostgreSQL with eventstoredb and ordersdb, nats-server with the ORDERS
//! stream, the real event store in-process, and ordersvc's router on top.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use ordersvc::{AppState, Config, router};
use pipeline_runtime::eventstore::EventStoreClient;
use serde_json::Value;
use sqlx::PgPool;
use testkit::{NatsServer, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

pub const REFERENCE_BODY: &str = r#"{"customer_id":"c1","restaurant_id":"r1","order_items":[{"code":"p1","name":"Pizza","unit_price":12.5,"quantity":2}]}"#;

pub struct Stack {
    pub postgres: Postgres,
    _nats: NatsServer,
    pub eventstore_db: PgPool,
    pub orders_db: PgPool,
    pub state: AppState,
    pub client: EventStoreClient,
    _eventstore: EventStoreTask,
}

struct EventStoreTask {
    _stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for EventStoreTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response, its body read as JSON (`Null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Stack {
    pub async fn start() -> Stack {
        testkit::init_tracing();
        let postgres = Postgres::start().expect("PostgreSQL starts");
        let nats = NatsServer::start().expect("nats-server starts");

        let eventstore_url = postgres.url("eventstoredb");
        let orders_url = postgres.url("ordersdb");
        let eventstore_db = migrated(&eventstore_url, bootstrapper::Context::EventStore).await;
        let orders_db = migrated(&orders_url, bootstrapper::Context::Orders).await;
        let js = bootstrapper::connect_jetstream(&nats.url(), Duration::from_secs(5))
            .await
            .expect("JetStream");
        bootstrapper::ensure_stream(&js, 1)
            .await
            .expect("stream created");

        let mut config = eventstore::Config::new(
            "127.0.0.1:0".parse().expect("address"),
            &eventstore_url,
            nats.url(),
        );
        config.timeout_ms = 1000;
        let app = eventstore::App::build(config)
            .await
            .expect("event store builds");
        let grpc_url = format!("http://{}", app.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));

        let mut config = Config::new(
            "127.0.0.1:0".parse().expect("address"),
            &grpc_url,
            &orders_url,
        );
        config.timeout_ms = 2000;
        config.min_version_wait_ms = 400;
        let state = AppState::new(&config).expect("ordersvc state");
        let client =
            EventStoreClient::connect_lazy(&grpc_url, Duration::from_secs(2)).expect("client");
        Stack {
            postgres,
            _nats: nats,
            eventstore_db,
            orders_db,
            state,
            client,
            _eventstore: EventStoreTask { _stop: stop, task },
        }
    }

    pub fn app(&self) -> Router {
        router(self.state.clone())
    }

    pub async fn call(&self, request: Request<Body>) -> Answer {
        call(self.app(), request).await
    }

    /// Rows in eventstoredb's `events`: what was appended, whatever the API answered.
    pub async fn stored_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.eventstore_db)
            .await
            .expect("count events")
    }
}

async fn migrated(url: &str, context: bootstrapper::Context) -> PgPool {
    bootstrapper::ensure_database(url)
        .await
        .expect("database created");
    let pool = PgPool::connect(url).await.expect("connect");
    bootstrapper::migrate(context, &pool)
        .await
        .expect("migrations run");
    pool
}

pub async fn call(app: Router, request: Request<Body>) -> Answer {
    let response = app.oneshot(request).await.expect("the router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("the body is not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    Answer {
        status,
        headers,
        body,
    }
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

pub fn post_json(path: &str, body: impl Into<String>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.into()))
        .expect("request")
}

pub fn post_with_key(path: &str, key: &str, body: impl Into<String>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", key)
        .body(Body::from(body.into()))
        .expect("request")
}

/// Places the reference order through the API; returns its id.
pub async fn place(stack: &Stack) -> uuid::Uuid {
    let answer = stack.call(post_json("/api/orders", REFERENCE_BODY)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["order_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an order id")
}
