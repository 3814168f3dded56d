//! The append step: the event store alone, on a bench stack whose ordersvc and workers are stopped
//! (nothing consumes, so the only work is the store's: its appends, its commits and its relay to
//! JetStream). `clients` closed-loop gRPC clients in this process, over four HTTP/2 connections,
//! each append a chain of [`CHAIN`] events to an aggregate of their own (`created`, then
//! `cancelled`: what ordersvc's certificate may append when the stack runs mTLS), then start a new
//! one. A run gives appends/s, CreateEvent latency as the client saw it, CPU of the event store,
//! PostgreSQL and nats-server per 1000 appends, commits per append (eventstoredb), and the outbox
//! left when the clients stopped with how long the relay took to empty it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pipeline_runtime::eventstore::{ClientTls, EventStoreClient, NewEvent};
use sqlx::{Connection as _, PgConnection};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::measure::{LOAD_GENERATOR, difference};
use super::table::{Append, Binaries};
use super::{Bench, STATS_FLUSH_WAIT, step};

/// The client counts of the append runs, one run each.
const CLIENTS: [usize; 3] = [1, 16, 64];
/// Events appended to one aggregate before a client moves on to a new one.
const CHAIN: i64 = 10;
/// gRPC connections the clients share, round robin.
const CHANNELS: usize = 4;
/// The warm-up before the first run (opens the store's connections, fills its caches).
const WARM_UP: Duration = Duration::from_secs(1);

/// About how long the step takes after its stack started, for `--duration` runs: a warm-up, the
/// statistics' wait after it, and each run with that wait and a second for the outbox.
pub fn planned(duration: Duration) -> Duration {
    let run = duration + STATS_FLUSH_WAIT + Duration::from_secs(1);
    WARM_UP + STATS_FLUSH_WAIT + run * CLIENTS.len() as u32
}
/// Longest wait for the relay to empty the outbox after a run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The certificate the clients present when the stack runs mTLS: ordersvc's may append `created`
/// and `cancelled` (eventstore's authz table).
const IDENTITY: &str = "ordersvc";
/// The processes that would consume or add to what is appended; stopped for the step.
const STOPPED: [&str; 5] = [
    "ordersvc",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
    "deadlinewatcher",
];

impl Bench {
    /// Stops ordersvc and the workers, warms the event store up, then one run per client count
    /// of [`CLIENTS`].
    pub(super) async fn appends(&self, binaries: Binaries) -> anyhow::Result<Vec<Append>> {
        self.stop_all_but_the_event_store().await?;
        let clients = self.event_store_clients()?;
        let mut outbox = PgConnection::connect(&self.database_url("eventstoredb"))
            .await
            .context("connecting to the bench stack's eventstoredb")?;
        let warm_up = append_load(&clients, 64, WARM_UP).await;
        if warm_up.latency.is_empty() {
            anyhow::bail!(
                "the event store took no append during the warm-up: {}",
                warm_up.first_error.unwrap_or_default()
            );
        }
        drain(&mut outbox).await?;
        // What autovacuum does on a live database; it also replaces plans the store's
        // connections made while the tables were empty.
        sqlx::query("ANALYZE events, outbox")
            .execute(&mut outbox)
            .await
            .context("ANALYZE events, outbox")?;
        // So that the first run's commits hold none of the warm-up's, flushed late.
        tokio::time::sleep(STATS_FLUSH_WAIT).await;
        let mut rows = Vec::new();
        for count in CLIENTS {
            rows.push(
                self.append_run(binaries, &clients, count, &mut outbox)
                    .await?,
            );
        }
        let _ = outbox.close().await;
        Ok(rows)
    }

    async fn append_run(
        &self,
        binaries: Binaries,
        clients: &[EventStoreClient],
        count: usize,
        outbox: &mut PgConnection,
    ) -> anyhow::Result<Append> {
        step(&format!(
            "append, {binaries} binaries: {count} gRPC client{} appending for {} s (the event store alone)",
            if count == 1 { "" } else { "s" },
            self.duration.as_secs()
        ));
        let before = self.snapshot().await?;
        let load = append_load(clients, count, self.duration).await;
        let cpu_after = self.snapshot().await?;
        let stopped = Instant::now();
        let outbox_at_end = outbox_len(outbox).await?;
        let own_queries = 1 + drain(outbox).await?;
        let drain_ms = stopped.elapsed().as_secs_f64() * 1000.0;
        tokio::time::sleep(STATS_FLUSH_WAIT).await;
        let after = self.snapshot().await?;

        let appends = load.latency.len() as u64;
        let per_1000 = 1000.0 / appends.max(1) as f64;
        let cpu_ms_per_1000 = difference(&before.cpu, &cpu_after.cpu)
            .into_iter()
            .filter(|(process, _)| process != LOAD_GENERATOR)
            .map(|(process, seconds)| (process, seconds * 1000.0 * per_1000))
            .collect();
        let commits = difference(&before.commits, &after.commits)
            .get("eventstoredb")
            .copied()
            .unwrap_or(0);
        let row = Append {
            binaries,
            clients: count,
            appends,
            errors: load.errors,
            first_error: load.first_error,
            seconds: load.elapsed.as_secs_f64(),
            p50_ms: percentile_ms(&load.latency, 0.50),
            p99_ms: percentile_ms(&load.latency, 0.99),
            max_ms: load.latency.last().copied().map(millis),
            cpu_ms_per_1000,
            commits: commits - own_queries,
            outbox_at_end,
            drain_ms,
        };
        eprintln!("  {}", row.summary());
        Ok(row)
    }

    /// SIGTERM to ordersvc and every worker (from the stack's pid files), awaited: the event
    /// store, PostgreSQL and nats-server keep running. The stack's `stop` skips what is gone.
    async fn stop_all_but_the_event_store(&self) -> anyhow::Result<()> {
        let pids: Vec<u32> = STOPPED
            .iter()
            .filter_map(|name| super::measure::pid_of(&self.pid_dir, name)?.parse().ok())
            .collect();
        tokio::task::spawn_blocking(move || {
            for &pid in &pids {
                crate::procs::signal(pid, "TERM");
            }
            for pid in pids {
                if !crate::procs::wait_gone(pid, Duration::from_secs(20)) {
                    anyhow::bail!("pid {pid} did not stop within 20 s of SIGTERM");
                }
            }
            Ok(())
        })
        .await?
    }

    /// [`CHANNELS`] clients of the stack's event store, over mTLS with ordersvc's certificate
    /// when the stack has certificates, else plaintext.
    fn event_store_clients(&self) -> anyhow::Result<Vec<EventStoreClient>> {
        let (url, tls) = match crate::certs::ServiceCerts::existing(&self.tls_dir) {
            Some(certs) => {
                let env: BTreeMap<String, String> = certs
                    .env(Some(IDENTITY), self.eventstore_port)
                    .into_iter()
                    .collect();
                let var = |name: &str| {
                    env.get(name)
                        .cloned()
                        .with_context(|| format!("the stack's certificates give no {name}"))
                };
                let tls = ClientTls::with_ca(var("EVENTSTORE_TLS_CA")?).with_client_identity(
                    var("EVENTSTORE_TLS_CLIENT_CERT")?,
                    var("EVENTSTORE_TLS_CLIENT_KEY")?,
                );
                (var("EVENTSTORE_URL")?, tls)
            }
            None => (
                format!("http://127.0.0.1:{}", self.eventstore_port),
                ClientTls::default(),
            ),
        };
        (0..CHANNELS)
            .map(|_| EventStoreClient::connect_lazy_with(&url, Duration::from_secs(10), &tls))
            .collect()
    }
}

/// What the clients of one run saw.
struct Load {
    elapsed: Duration,
    /// Of every successful append, sorted.
    latency: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// `count` clients appending in a closed loop for `duration`, spread over `channels`.
async fn append_load(channels: &[EventStoreClient], count: usize, duration: Duration) -> Load {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for index in 0..count {
        let client = channels[index % channels.len()].clone();
        tasks.spawn(append_client(client, deadline));
    }
    let mut load = Load {
        elapsed: Duration::ZERO,
        latency: Vec::new(),
        errors: 0,
        first_error: None,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(client) => {
                load.latency.extend(client.latency);
                load.errors += client.errors;
                if load.first_error.is_none() {
                    load.first_error = client.first_error;
                }
            }
            Err(error) => {
                load.errors += 1;
                load.first_error
                    .get_or_insert_with(|| format!("a client task failed: {error}"));
            }
        }
    }
    load.elapsed = started.elapsed();
    load.latency.sort_unstable();
    load
}

/// One client: appends until `deadline`, a chain of [`CHAIN`] events per aggregate.
async fn append_client(client: EventStoreClient, deadline: Instant) -> Load {
    let mut outcome = Load {
        elapsed: Duration::ZERO,
        latency: Vec::with_capacity(4096),
        errors: 0,
        first_error: None,
    };
    let mut aggregate = Uuid::new_v4().to_string();
    let mut version = 0_i64;
    while Instant::now() < deadline {
        let began = Instant::now();
        match client.append(event(&aggregate, version), version).await {
            Ok(appended) => {
                outcome.latency.push(began.elapsed());
                version = appended.version;
                if version >= CHAIN {
                    (aggregate, version) = (Uuid::new_v4().to_string(), 0);
                }
            }
            Err(error) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert_with(|| error.to_string());
                // A fresh aggregate, so that one failure does not become a run of conflicts;
                // and a pause, so that a failing store is not spun on.
                (aggregate, version) = (Uuid::new_v4().to_string(), 0);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    outcome
}

/// The next event of `aggregate`, which is at `version`: an order-like body of about 300 bytes.
fn event(aggregate: &str, version: i64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: if version == 0 { "created" } else { "cancelled" }.to_owned(),
        aggregate_id: aggregate.to_owned(),
        aggregate_type: "order".to_owned(),
        data: serde_json::json!({
            "order_id": aggregate,
            "customer_id": "5f0c9a7e-3b1d-4c2a-9e8f-7a6b5c4d3e2f",
            "restaurant_id": "r1",
            "step": version,
            "order_items": [
                { "code": "p1", "name": "Pizza", "unit_price": "12.50", "quantity": 2 },
                { "code": "p2", "name": "Salad", "unit_price": "5.00", "quantity": 1 },
            ],
            "amount": "30.00",
        }),
        metadata: BTreeMap::from([("correlation_id".to_owned(), aggregate.to_owned())]),
    }
}

async fn outbox_len(connection: &mut PgConnection) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(connection)
        .await
        .context("counting the outbox")
}

/// Waits until the outbox is empty (the relay published everything and JetStream acked it);
/// how many queries that took (each is a commit of eventstoredb that is not the store's).
async fn drain(connection: &mut PgConnection) -> anyhow::Result<i64> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut queries = 0;
    loop {
        queries += 1;
        let left = outbox_len(connection).await?;
        if left == 0 {
            return Ok(queries);
        }
        if Instant::now() > deadline {
            anyhow::bail!("the outbox still holds {left} events {DRAIN_TIMEOUT:?} after the run");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nearest-rank `q` quantile of `sorted`, in milliseconds; `None` when it is empty.
fn percentile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    // Nearest rank: the smallest sample with at least q of them at or below it.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(millis(sorted[rank.saturating_sub(1).min(last)]))
}

/// Milliseconds to the microsecond (the table prints them as they are).
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentile_is_the_nearest_rank_in_milliseconds() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&samples, 0.50), Some(50.0));
        assert_eq!(percentile_ms(&samples, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&samples, 1.0), Some(100.0));
        assert_eq!(
            percentile_ms(&[Duration::from_micros(1500)], 0.99),
            Some(1.5)
        );
        assert_eq!(percentile_ms(&[], 0.5), None);
        // To the microsecond, so that the table prints no float noise.
        assert_eq!(millis(Duration::from_nanos(115_125_729)), 115.126);
    }

    #[test]
    fn a_chain_starts_with_created_and_goes_on_with_what_ordersvc_may_append() {
        let first = event("a1", 0);
        let next = event("a1", 3);
        assert_eq!(first.event_type, "created");
        assert_eq!(next.event_type, "cancelled");
        assert_ne!(first.event_id, next.event_id);
        let body = serde_json::to_string(&next.data).expect("JSON");
        assert!(
            (250..400).contains(&body.len()),
            "{} bytes: {body}",
            body.len()
        );
    }
}
