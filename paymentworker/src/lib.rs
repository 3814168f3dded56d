#![doc = include_str!("../README.md")]

mod config;
pub mod ledger;
mod worker;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use pipeline_runtime::{consumer, db};
use secrecy::ExposeSecret as _;
use sqlx::PgPool;

pub use config::Config;

use crate::worker::Worker;

/// The durable consumer (and binary) name.
pub const NAME: &str = "paymentworker";

/// paymentsdb's migrations (`migrations/`: wallets and payments), embedded at compile time; the
/// bootstrapper applies them, tests apply them on their own database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The payment worker, ready to consume.
pub struct App {
    config: Config,
    nats: async_nats::Client,
    pool: PgPool,
    worker: Arc<Worker>,
}

impl App {
    /// Prepares the connections. None of NATS, the event store or the database needs to be up:
    /// the worker waits for them.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        // Every statement of the ledger finds its rows by a key (an order, a customer): each is
        // planned once per connection.
        let pool = db::keyed_pool(
            config.payments_database_url.expose_secret(),
            config.db_connections,
            config.worker.timeout(),
        )
        .context("PAYMENTS_DATABASE_URL")?;
        let (store, nats) = config.worker.connect(NAME).await?;
        let worker = Arc::new(Worker {
            store,
            pool: pool.clone(),
            initial_credit: config.initial_credit,
        });
        Ok(App {
            config,
            nats,
            pool,
            worker,
        })
    }

    /// Consumes until `shutdown` resolves, then finishes (and acks) the messages in hand.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let worker = self.worker;
        let handler = move |deliveries| {
            let worker = Arc::clone(&worker);
            async move { worker.handle_batch(deliveries).await }
        };
        // The event types it acts on are its consumer's (`stream::CONSUMERS`): on nats-server
        // 2.10+ the only ones delivered, on 2.9 the others are acked unseen.
        let options = self.config.worker.options();
        let result =
            consumer::run_batches_until_stopped(self.nats, NAME, options, handler, shutdown).await;
        self.pool.close().await;
        result
    }
}
