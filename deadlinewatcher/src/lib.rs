#![doc = include_str!("../README.md")]

mod config;
pub mod scan;
mod watcher;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use order_domain::Deadlines;
use pipeline_runtime::db;
use pipeline_runtime::eventstore::EventStoreClient;
use secrecy::ExposeSecret as _;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use config::{
    Config, DEFAULT_EVENTSTORE_URL, DEFAULT_ORDERS_DATABASE_URL, DeadlineArgs, MAX_DEADLINE,
    MIN_DEADLINE,
};
#[cfg(feature = "test-util")]
pub use watcher::AppendGate;
pub use watcher::{EnforceError, Outcome, Sweep, Watcher};

/// The binary's (and the service's) name.
pub const NAME: &str = "deadlinewatcher";

/// A failure that goes on is logged again at most this often.
const REPEAT_WARNING: Duration = Duration::from_secs(60);

/// The watcher, ready to sweep.
pub struct App {
    watcher: Arc<Watcher>,
    scan_interval: Duration,
}

impl App {
    /// Checks the configuration and prepares the connections; neither the read model nor the
    /// event store needs to be up: each sweep tries them again.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let store = EventStoreClient::connect_lazy_with(
            &config.eventstore_url,
            config.timeout(),
            &config.eventstore_tls,
        )
        .context("EVENTSTORE_URL")?;
        let pool = db::lazy_pool(
            config.orders_database_url.expose_secret(),
            2,
            config.timeout(),
        )
        .context("ORDERS_DATABASE_URL")?;
        Ok(App {
            watcher: Arc::new(Watcher::new(store, pool, config.deadlines.deadlines())),
            scan_interval: config.scan_interval,
        })
    }

    pub fn deadlines(&self) -> Deadlines {
        self.watcher.deadlines()
    }

    pub fn scan_interval(&self) -> Duration {
        self.scan_interval
    }

    /// The watcher itself, for a test that sweeps at a moment of its choosing.
    pub fn watcher(&self) -> Arc<Watcher> {
        Arc::clone(&self.watcher)
    }

    /// Sweeps every `scan_interval` until `shutdown` resolves; a sweep in progress stops after the
    /// orders in hand.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let signal = tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let mut ticker = tokio::time::interval(self.scan_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = Failing::default();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let sweep = self.watcher.sweep(OffsetDateTime::now_utc(), &stop).await;
            tracing::debug!(?sweep, "sweep");
            failing.report(&sweep);
        }
        signal.abort();
        self.watcher.pool().close().await;
        Ok(())
    }
}

/// Logs a sweep's failure once, again only when it changes or once a minute while it goes on, and
/// says when sweeps succeed again: an event store down for an hour is not 3,600 warnings.
#[derive(Default)]
struct Failing {
    since: Option<Instant>,
    last_warned: Option<(Instant, String)>,
}

impl Failing {
    fn report(&mut self, sweep: &Sweep) {
        match &sweep.error {
            Some(error) => {
                let since = *self.since.get_or_insert_with(Instant::now);
                let repeat = self
                    .last_warned
                    .as_ref()
                    .is_none_or(|(at, last)| last != error || at.elapsed() >= REPEAT_WARNING);
                if repeat {
                    tracing::warn!(
                        failed = sweep.failed,
                        failing_for_s = since.elapsed().as_secs(),
                        "overdue orders could not all be decided; the next sweep tries again: {error}"
                    );
                    self.last_warned = Some((Instant::now(), error.clone()));
                }
            }
            None => {
                if let Some(since) = self.since.take() {
                    tracing::info!(after_s = since.elapsed().as_secs(), "sweeps succeed again");
                }
                self.last_warned = None;
            }
        }
    }
}
