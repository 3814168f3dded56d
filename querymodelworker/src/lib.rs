#![doc = include_str!("../README.md")]

use std::future::Future;

use anyhow::Context as _;
use pipeline_runtime::consumer::{self, Delivery, Failure};
use pipeline_runtime::eventstore::EventStoreClient;
use pipeline_runtime::stream::{READ_MODEL_SUBJECT, ReadModelChange};
use pipeline_runtime::{db, nats};
use secrecy::ExposeSecret as _;

mod batch;
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
        let notices = self.client.clone();
        let handler = move |deliveries: Vec<Delivery>| {
            let projector = projector.clone();
            let notices = notices.clone();
            async move { handle_batch(&projector, &notices, deliveries).await }
        };
        let result = consumer::run_batches_until_stopped(
            self.client,
            WORKER,
            self.options,
            handler,
            shutdown,
        )
        .await;
        self.projector.pool().close().await;
        result
    }
}

/// A batch of deliveries, projected together: applied or a duplicate is an ack; refused is a dead
/// letter; anything else retries. Then one notice on [`READ_MODEL_SUBJECT`] names the orders that
/// moved, so readers waiting for them need not re-read the read model.
async fn handle_batch(
    projector: &Projector,
    notices: &async_nats::Client,
    deliveries: Vec<Delivery>,
) -> Vec<Result<(), Failure>> {
    let envelopes: Vec<_> = deliveries.iter().map(|d| d.envelope.clone()).collect();
    let outcomes = projector.project_batch(envelopes).await;
    let mut moved = Vec::new();
    let results = deliveries
        .iter()
        .zip(outcomes)
        .map(|(delivery, outcome)| match outcome {
            Ok(outcome) => {
                if let Outcome::Applied { to, .. } = outcome
                    && let Ok(order_id) = uuid::Uuid::parse_str(&delivery.envelope.aggregate_id)
                {
                    moved.push(ReadModelChange {
                        order_id,
                        version: to,
                        event_type: delivery.envelope.event_type.clone(),
                    });
                }
                Ok(())
            }
            Err(ProjectionError::Refused(reason)) => {
                Err(Failure::dead_letter(anyhow::anyhow!(reason)))
            }
            Err(err) => Err(Failure::retry(err)),
        })
        .collect();
    if !moved.is_empty() {
        notify(notices, &moved).await;
    }
    results
}

/// Publishes a notice of the orders that moved. Best effort (core NATS, no ack): a lost notice
/// only makes a waiting reader fall back to its slow re-read.
async fn notify(client: &async_nats::Client, moved: &[ReadModelChange]) {
    match serde_json::to_vec(moved) {
        Ok(body) => {
            if let Err(err) = client.publish(READ_MODEL_SUBJECT, body.into()).await {
                tracing::debug!(error = %err, "read-model notice not sent");
            }
        }
        Err(err) => tracing::debug!(error = %err, "read-model notice not encoded"),
    }
}

/// The projector for `config`: a lazy pool of ordersdb and a lazy event store channel.
fn connect(config: &Config) -> anyhow::Result<Projector> {
    // One batch transaction at a time, plus the one-at-a-time fallbacks after it. Every statement
    // of the projection reads orders by their id, so each is planned once per connection (the
    // rebuild's count and deletes read whole tables either way).
    let connections = 4;
    let pool = db::keyed_pool(
        config.orders_database_url.expose_secret(),
        connections,
        config.timeout(),
    )
    .context("ORDERS_DATABASE_URL")?;
    let events = EventStoreClient::connect_lazy_with(
        &config.eventstore_url,
        config.timeout(),
        &config.eventstore_tls,
    )
    .context("EVENTSTORE_URL")?;
    Ok(Projector::new(pool, events))
}
