#![doc = include_str!("../README.md")]

mod config;
mod worker;

use std::future::Future;
use std::sync::Arc;

use pipeline_runtime::consumer;

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
        let (store, nats) = config.worker.connect(NAME).await?;
        let worker = Arc::new(Worker {
            store,
            max_amount: config.max_amount,
            #[cfg(feature = "test-util")]
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
        let worker = self.worker;
        let handler = move |deliveries| {
            let worker = Arc::clone(&worker);
            async move { worker.handle_batch(deliveries).await }
        };
        let options = self.config.worker.options();
        consumer::run_batches_until_stopped(self.nats, NAME, options, handler, shutdown).await
    }
}
