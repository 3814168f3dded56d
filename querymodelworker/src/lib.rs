#![doc = include_str!("../README.md")]

use std::future::Future;

use anyhow::Context as _;
use pipeline_runtime::consumer::{self, Delivery, Failure};
use pipeline_runtime::eventstore::EventStoreClient;
use pipeline_runtime::{db, nats};

mod config;
pub mod projection;
mod rebuild;
pub mod trace;

pub use config::{Cli, Command, Config};
pub use projection::{Outcome, ProjectionError, Projector};
pub use rebuild::{RebuildReport, rebuild};

/// The durable consumer (and binary) name.
pub const WORKER: &str = "querymodelworker";

/// The worker, ready to consume.
pub struct App {
    client: async_nats::Client,
    projector: Projector,
    options: consumer::Options,
}

impl App {
    /// Checks the configuration and prepares the connections. NATS, the database and the event store
    /// may still be down: the worker waits for them.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let projector = connect(&config)?;
        let client = nats::connect_in_background(&config.nats, WORKER).await?;
        Ok(App {
            client,
            projector,
            options: config.consumer_options(),
        })
    }

    /// Consumes `ORDERS.*` until `shutdown` completes, then finishes the messages in hand.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let projector = self.projector.clone();
        let handler = move |delivery: Delivery| {
            let projector = projector.clone();
            async move { handle(&projector, delivery).await }
        };
        let result =
            consumer::run_until_stopped(self.client, WORKER, self.options, handler, shutdown).await;
        self.projector.pool().close().await;
        result
    }
}

/// One delivery: applied or a duplicate is an ack; refused is a dead letter; anything else retries.
async fn handle(projector: &Projector, delivery: Delivery) -> Result<(), Failure> {
    match projector.project(delivery.envelope).await {
        Ok(outcome) => {
            tracing::debug!(?outcome, "projected");
            Ok(())
        }
        Err(ProjectionError::Refused(reason)) => Err(Failure::dead_letter(anyhow::anyhow!(reason))),
        Err(err) => Err(Failure::retry(err)),
    }
}

/// The projector for `config`: a lazy pool of ordersdb and a lazy event store channel.
fn connect(config: &Config) -> anyhow::Result<Projector> {
    let connections = u32::from(config.worker_concurrency).saturating_add(2);
    let pool = db::lazy_pool(&config.orders_database_url, connections, config.timeout())
        .context("ORDERS_DATABASE_URL")?;
    let events = EventStoreClient::connect_lazy(&config.eventstore_url, config.timeout())
        .context("EVENTSTORE_URL")?;
    Ok(Projector::new(pool, events))
}
