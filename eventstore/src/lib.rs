#![doc = include_str!("../README.md")]

mod appender;
pub mod authz;
mod command;
mod config;
mod error;
mod grpc;
mod model;
mod relay;
pub mod republish;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use eventstore_proto::event_store_server::EventStoreServer;
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;

pub use crate::command::Command;
pub use crate::config::Config;
pub use crate::error::StoreError;
pub use crate::relay::publishable;

/// eventstoredb's migrations (`migrations/`: events and outbox), embedded at compile time; the
/// bootstrapper applies them, tests apply them on their own database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

use crate::appender::{Appender, CommitSignals};
use crate::grpc::EventStoreService;
use crate::model::Limits;
use crate::relay::Relay;

/// Largest gRPC message accepted: the event size limit plus room for the envelope, so an oversized
/// event is refused by our validation with a clear message rather than by the transport.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Committed batches waiting for the relay's memory path; when it is full, the sweep publishes.
const RELAY_QUEUE: usize = 1024;
/// How long the whole stop may take once the shutdown signal arrived.
const GRACE: Duration = Duration::from_secs(10);

/// The event store, bound to its port and ready to run.
pub struct App {
    config: Config,
    /// `Some` when the server speaks TLS (`EVENTSTORE_TLS_CERT`, `EVENTSTORE_TLS_KEY`).
    tls: Option<ServerTlsConfig>,
    /// Client certificates are required and authorize each call (`EVENTSTORE_TLS_CLIENT_CA`).
    mtls: bool,
    listener: TcpListener,
    pool: PgPool,
    /// The appends' and the outbox deletes' connections, which plan each statement once.
    keyed: PgPool,
    nats: async_nats::Client,
}

impl App {
    /// Checks the whole configuration, then binds the listener and prepares the connections. Neither
    /// the database nor NATS needs to be up: appends answer UNAVAILABLE while the database is down
    /// and wait in the outbox while NATS is.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Before binding: a bad value stops the start with no port taken.
        config.validate()?;
        let tls = config.server_tls()?;
        let mtls = config.client_ca().is_some();
        let pool = pipeline_runtime::db::lazy_pool(
            config.database_url.expose_secret(),
            config.db_connections,
            config.timeout(),
        )
        .context("EVENTSTORE_DATABASE_URL")?;
        // The appends and the outbox deletes read only by key: their statements are planned once
        // per connection.
        let keyed = pipeline_runtime::db::keyed_pool(
            config.database_url.expose_secret(),
            u32::from(config.batch_workers) + 1,
            config.timeout(),
        )
        .context("EVENTSTORE_DATABASE_URL")?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {} (EVENTSTORE_ADDR)", config.addr))?;
        let nats =
            pipeline_runtime::nats::connect_in_background(&config.nats, "eventstore").await?;
        Ok(Self {
            config,
            tls,
            mtls,
            listener,
            pool,
            keyed,
            nats,
        })
    }

    /// Whether the server speaks TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the server requires client certificates and authorizes by their identity.
    pub fn uses_mtls(&self) -> bool {
        self.mtls
    }

    /// How clients are checked, in words, for the start-up log line.
    pub fn client_auth(&self) -> &'static str {
        match (self.tls.is_some(), self.mtls) {
            (_, true) => {
                "mTLS: client certificates required, appends and reads authorized by identity"
            }
            (true, false) => {
                "no client certificates (EVENTSTORE_TLS_CLIENT_CA unset): any client may append any event"
            }
            (false, false) => {
                "plaintext, no client identities (EVENTSTORE_TLS_CLIENT_CA unset): any client may append any event"
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.addr)
    }

    /// Serves until `shutdown` resolves, then stops in order: no new requests, streaming reads end,
    /// queued appends commit, the relay publishes what was committed, connections close.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            tls,
            mtls,
            listener,
            pool,
            keyed,
            nats,
        } = self;
        // First, so that nothing is started when it fails (it cannot: `build` checked the files).
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .context("EVENTSTORE_TLS_CERT / EVENTSTORE_TLS_KEY")?;
        }
        let commits = watch::channel(0).0;
        let followers = commits.subscribe();
        // Only the appender's workers hold the sender: the relay sees the channel close once they
        // committed everything queued.
        let (committed_sender, committed) = mpsc::channel(RELAY_QUEUE);
        let (appender, mut workers) = Appender::start(
            keyed.clone(),
            usize::from(config.batch_workers),
            usize::from(config.batch_size),
            CommitSignals {
                relay: committed_sender,
                commits,
            },
        );

        let stop_relay = CancellationToken::new();
        let mut jetstream = async_nats::jetstream::new(nats.clone());
        jetstream.set_timeout(config.timeout());
        let relay = Relay {
            pool: pool.clone(),
            keyed: keyed.clone(),
            nats: nats.clone(),
            publisher: relay::Publisher {
                jetstream,
                timeout: config.timeout(),
            },
            committed,
            sweep_interval: config.sweep_interval(),
        };
        let relay_task = tokio::spawn(relay.run(stop_relay.clone()));
        // Says loudly when the stream lost events JetStream acknowledged; never delays serving.
        let tail_check = tokio::spawn(republish::check_at_start(
            pool.clone(),
            nats.clone(),
            config.timeout(),
        ));

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<EventStoreServer<EventStoreService>>()
            .await;
        let stop_streams = CancellationToken::new();
        let service = EventStoreService::new(
            appender,
            pool.clone(),
            Limits {
                max_event_bytes: config.max_event_bytes,
            },
            followers,
            stop_streams.clone(),
            mtls,
        );
        let server = builder
            .trace_fn(grpc::server_span)
            .add_service(health_service)
            .add_service(
                EventStoreServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming(listener), async move {
                shutdown.await;
                health
                    .set_not_serving::<EventStoreServer<EventStoreService>>()
                    .await;
                stop_streams.cancel();
            });

        let served = server.await.context("gRPC server failed");
        tail_check.abort();
        let drained = tokio::time::timeout(GRACE, async {
            // The service (and with it the last Appender) is gone: workers commit what is queued.
            while workers.join_next().await.is_some() {}
            stop_relay.cancel();
            let _ = relay_task.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period over; unpublished events stay in the outbox");
        }
        pool.close().await;
        keyed.close().await;
        served
    }
}

/// The accepted connections, each with Nagle's algorithm off. A listener handed to tonic as a plain
/// stream keeps it on, and a streaming answer (`GetEvents`) goes out as several small writes: the
/// last waited for the client's delayed ACK, about 40 ms per call.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        testkit::net::assert_accepts_without_nagle(|listener| async {
            let mut accepted = incoming(listener);
            let stream = accepted.next().await.expect("a connection");
            stream.expect("accepted")
        })
        .await;
    }
}
