//! One test's world: PostgreSQL with eventstoredb and ordersdb, nats-server with the ORDERS
//! stream, the real event store in-process, and ordersvc's router on top.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use ordersvc::{AppState, Config, router};
use pipeline_harness::Setup;
use pipeline_harness::{EVENTSTORE, ORDERS};
use pipeline_runtime::nats::NatsArgs;
use serde_json::Value;
use sqlx::PgPool;
use testkit::tokens::TokenIssuer;
use tower::ServiceExt as _;

/// The issuer and audience of [`tokens`]'s tokens, which ordersvc is configured to accept.
pub const ISSUER: &str = "https://id.orders.test";
pub const AUDIENCE: &str = "orders-api";

/// The test binary's identity provider: one signing key, its JWKS in a file, tokens on demand.
pub struct Tokens {
    pub issuer: TokenIssuer,
    pub jwks: PathBuf,
    _dir: tempfile::TempDir,
    operator: String,
}

impl Tokens {
    /// A token of `customer_id` (its `sub`), no scope.
    pub fn customer(&self, customer_id: &str) -> String {
        self.issuer.customer(customer_id)
    }

    /// An operator's token (scope `orders:admin`).
    pub fn operator(&self) -> &str {
        &self.operator
    }
}

pub fn tokens() -> &'static Tokens {
    static TOKENS: LazyLock<Tokens> = LazyLock::new(|| {
        let issuer = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a signing key");
        let dir = tempfile::tempdir().expect("a folder for the JWKS");
        let jwks = dir.path().join("jwks.json");
        issuer.write_jwks(&jwks).expect("the JWKS file");
        let operator = issuer.operator();
        Tokens {
            issuer,
            jwks,
            _dir: dir,
            operator,
        }
    });
    &TOKENS
}

/// ordersvc's configuration for these addresses, accepting [`tokens`]'s tokens.
pub fn config(eventstore_url: &str, orders_database_url: impl Into<String>) -> Config {
    Config::new(
        "127.0.0.1:0".parse().expect("address"),
        eventstore_url,
        orders_database_url,
    )
    .with_tokens(
        tokens().jwks.to_str().expect("a UTF-8 path"),
        ISSUER,
        AUDIENCE,
    )
}

pub const REFERENCE_BODY: &str = r#"{"customer_id":"c1","restaurant_id":"r1","order_items":[{"code":"p1","name":"Pizza","unit_price":12.5,"quantity":2}]}"#;

pub struct Stack {
    base: pipeline_harness::Stack,
    pub eventstore_db: PgPool,
    pub orders_db: PgPool,
    pub state: AppState,
    config: Config,
}

/// A response, its body read as JSON (`Null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(false).await
    }

    /// [`Stack::start`] with the event store's database behind a cut proxy
    /// ([`pipeline_harness::Stack::eventstore_cut`]).
    pub async fn start_with_eventstore_cut() -> Stack {
        Stack::start_with(true).await
    }

    async fn start_with(cut_eventstore_db: bool) -> Stack {
        let base = pipeline_harness::Stack::start_with(Setup {
            databases: &[ORDERS],
            consumers: false,
            eventstore_timeout_ms: 1000,
            sweep_interval_ms: None,
            client_timeout: Duration::from_secs(2),
            cut_eventstore_db,
            ..Setup::default()
        })
        .await;
        let eventstore_db = base.pool(EVENTSTORE).await;
        let orders_db = base.pool(ORDERS).await;

        let mut config = config(&base.eventstore_url, base.database_url(ORDERS));
        config.timeout_ms = 2000;
        config.min_version_wait_ms = 400;
        let state = AppState::new(&config).expect("ordersvc state");
        Stack {
            base,
            eventstore_db,
            orders_db,
            state,
            config,
        }
    }

    /// Another ordersvc on the same stack, configured as `adjust` says; its NATS is the stack's.
    pub fn state_with(&self, adjust: impl FnOnce(&mut Config)) -> (Config, AppState) {
        let mut config = self.config.clone();
        config.nats = NatsArgs::new(self.base.nats.url());
        adjust(&mut config);
        let state = AppState::new(&config).expect("ordersvc state");
        (config, state)
    }

    pub fn app(&self) -> Router {
        router(self.state.clone())
    }

    /// Sends `request` as an operator unless it carries a token of its own.
    pub async fn call(&self, request: Request<Body>) -> Answer {
        call(self.app(), request).await
    }

    /// Sends `request` as it is (without a token unless it has one).
    pub async fn call_raw(&self, request: Request<Body>) -> Answer {
        call_raw(self.app(), request).await
    }

    /// Rows in eventstoredb's `events`: what was appended, whatever the API answered.
    pub async fn stored_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.eventstore_db)
            .await
            .expect("count events")
    }
}

impl Deref for Stack {
    type Target = pipeline_harness::Stack;

    fn deref(&self) -> &pipeline_harness::Stack {
        &self.base
    }
}

impl DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut pipeline_harness::Stack {
        &mut self.base
    }
}

/// Sends `request` to `app` as an operator unless it carries a token of its own.
pub async fn call(app: Router, mut request: Request<Body>) -> Answer {
    if !request.headers().contains_key(header::AUTHORIZATION) {
        let bearer = format!("Bearer {}", tokens().operator());
        request.headers_mut().insert(
            header::AUTHORIZATION,
            bearer.parse().expect("a header value"),
        );
    }
    call_raw(app, request).await
}

/// Sends `request` to `app` as it is.
pub async fn call_raw(app: Router, request: Request<Body>) -> Answer {
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

/// `request` with `token` as its bearer token.
pub fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
    let bearer = format!("Bearer {token}");
    request.headers_mut().insert(
        header::AUTHORIZATION,
        bearer.parse().expect("a header value"),
    );
    request
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
