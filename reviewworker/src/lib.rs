#![doc = include_str!("../README.md")]

mod config;
mod history;
mod worker;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use pipeline_runtime::eventstore::EventStoreClient;
use pipeline_runtime::{consumer, nats, stream};
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::worker::Worker;

/// The durable consumer (and binary) name.
pub const NAME: &str = "reviewworker";

/// The review worker, ready to consume.
pub struct App {
    config: Config,
    nats: async_nats::Client,
    worker: Arc<Worker>,
}

impl App {
    /// Prepares the connections. Neither NATS nor the event store needs to be up: the worker waits
    /// for them.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let store = EventStoreClient::connect_lazy(&config.eventstore_url, config.timeout())
            .context("EVENTSTORE_URL")?;
        let nats = nats::connect_in_background(&config.nats_url, NAME)
            .await
            .context("NATS_URL")?;
        let worker = Arc::new(Worker {
            store,
            max_amount: config.max_amount,
            hold: config.hold.clone(),
        });
        Ok(App {
            config,
            nats,
            worker,
        })
    }

    /// Consumes until `shutdown` resolves, then finishes (and acks) the messages in hand.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let spec = stream::consumer(NAME).context("no consumer is defined for reviewworker")?;
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let watcher = tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let worker = self.worker;
        let handler = move |delivery| {
            let worker = Arc::clone(&worker);
            async move { worker.handle(delivery).await }
        };
        let result = consumer::run(
            self.nats.clone(),
            spec,
            self.config.consumer_options(),
            handler,
            stop,
        )
        .await;
        watcher.abort();
        if let Err(err) = self.nats.flush().await {
            tracing::debug!(error = %err, "NATS flush on stop");
        }
        result
    }
}
