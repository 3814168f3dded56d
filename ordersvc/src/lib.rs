#![doc = include_str!("../README.md")]

mod admission;
mod auth;
mod body;
mod config;
mod error;
mod moves;
mod openapi;
mod routes;
mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pipeline_runtime::eventstore::EventStoreClient;
use pipeline_runtime::nats::NatsArgs;
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};

pub use crate::auth::{
    Auth, Caller, JWKS_CA_VARIABLE, LEEWAY_SECS, MAX_JWKS_BYTES, MIN_REFRESH, OPERATOR_SCOPE,
};
pub use crate::body::MAX_BODY_BYTES;
pub use crate::config::{
    AuthMode, Config, DEFAULT_ADDR, DEFAULT_EVENTSTORE_URL, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MIN_VERSION_REREAD_MS, DEFAULT_ORDERS_DATABASE_URL,
};
pub use crate::error::{ApiError, RETRY_AFTER_SECS};
pub use crate::routes::document as openapi_document;
pub use crate::routes::router;

/// What every handler shares: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) events: EventStoreClient,
    pub(crate) db: PgPool,
    pub(crate) min_version_wait: Duration,
    /// How often a `min_version` wait re-reads when no notice woke it.
    pub(crate) min_version_reread: Duration,
    /// The orders `min_version` requests wait on, woken by read-model notices.
    pub(crate) moves: moves::Moves,
    /// Built once: the document never changes while the process runs.
    pub(crate) openapi: Arc<serde_json::Value>,
    /// The bound of requests in flight, shared by every clone of the router.
    pub(crate) admission: admission::Admission,
    /// Who may call the API (`ORDERSVC_JWKS`, or `ORDERSVC_AUTH=none`).
    pub(crate) auth: Auth,
}

impl AppState {
    /// Prepares the event store channel and the database pool; neither connects until first use,
    /// so the service starts (and answers `/readyz` with 503) while its dependencies are down.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        config.validate()?;
        let auth = config.token_check()?;
        if auth.is_open() {
            tracing::warn!(
                "ORDERSVC_AUTH=none: the order API is OPEN, no token is checked; anyone who \
                 reaches the port can read, place and cancel every customer's orders"
            );
        }
        let events = EventStoreClient::connect_lazy_with(
            &config.eventstore_url,
            config.timeout(),
            &config.eventstore_tls,
        )
        .context("EVENTSTORE_URL")?;
        let db = pipeline_runtime::db::lazy_pool(
            config.orders_database_url.expose_secret(),
            config.db_connections,
            config.timeout(),
        )
        .context("ORDERS_DATABASE_URL")?;
        Ok(Self {
            events,
            db,
            min_version_wait: config.min_version_wait(),
            min_version_reread: config.min_version_reread(),
            moves: moves::Moves::default(),
            openapi: Arc::new(routes::document()),
            admission: admission::Admission::new(config.max_in_flight),
            auth,
        })
    }

    /// `GET /api/orders/{id}?min_version=N` requests that read their order, found it behind
    /// version N, and wait for a notice or their re-read.
    pub fn reads_waiting(&self) -> usize {
        self.moves.requests_asleep()
    }

    /// Follows querymodelworker's read-model notices on the NATS of `nats` while a
    /// `min_version` request waits, so that it is answered as soon as its order moved; a few
    /// seconds after the last one left, unsubscribes until another comes. Returns at once: while
    /// NATS is unreachable the client connects in the background and those requests re-read. A
    /// server that refuses our user is an error.
    pub async fn follow_read_model(
        &self,
        nats: &NatsArgs,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        self.follow_read_model_lingering(nats, moves::LINGER).await
    }

    /// [`AppState::follow_read_model`], unsubscribing `linger` after the last waiting request left.
    pub async fn follow_read_model_lingering(
        &self,
        nats: &NatsArgs,
        linger: Duration,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let client = pipeline_runtime::nats::connect_in_background(nats, "ordersvc")
            .await
            .context("read-model notices (NATS_URL)")?;
        Ok(tokio::spawn(moves::follow(
            client,
            self.moves.clone(),
            linger,
        )))
    }

    /// Whether this instance follows the read-model notices right now (subscribed, and the
    /// subscription confirmed by the server): only while a `min_version` request waits, and for a
    /// few seconds after.
    pub fn follows_read_model(&self) -> bool {
        self.moves.following()
    }
}

/// How long requests in flight may run once the shutdown signal arrived.
const GRACE: Duration = Duration::from_secs(10);

/// ordersvc, bound to its port and ready to run.
pub struct App {
    addr: SocketAddr,
    listener: TcpListener,
    state: AppState,
    notices: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let state = AppState::new(&config)?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {} (ORDERSVC_ADDR)", config.addr))?;
        let notices = state.follow_read_model(&config.nats).await?;
        Ok(Self {
            addr: config.addr,
            listener,
            state,
            notices,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.addr)
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            notices,
            ..
        } = self;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "ordersvc listening");
        }
        let db = state.db.clone();
        let (fired, mut seen) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            let _ = fired.send(true);
        };
        // A client that keeps a request open must not hold the stop forever.
        let grace = async move {
            if seen.wait_for(|fired| *fired).await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(GRACE).await;
        };
        let serve =
            axum::serve(without_nagle(listener), router(state)).with_graceful_shutdown(signal);
        tokio::select! {
            served = serve => served.context("serving HTTP")?,
            () = grace => tracing::warn!(?GRACE, "requests still running after the grace period; dropping them"),
        }
        notices.abort();
        db.close().await;
        tracing::info!("ordersvc stopped");
        Ok(())
    }
}

/// Accepted connections with Nagle's algorithm off: an answer written in more than one piece must
/// not wait for the client's delayed ACK (about 40 ms).
fn without_nagle(listener: TcpListener) -> axum::serve::TapIo<TcpListener, fn(&mut TcpStream)> {
    fn nodelay(tcp: &mut TcpStream) {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot turn Nagle's algorithm off");
        }
    }
    axum::serve::ListenerExt::tap_io(listener, nodelay as fn(&mut TcpStream))
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener as _;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        testkit::net::assert_accepts_without_nagle(|listener| async {
            let (stream, _) = without_nagle(listener).accept().await;
            stream
        })
        .await;
    }
}
