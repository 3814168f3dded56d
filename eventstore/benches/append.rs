//! Append throughput of the event store, measured against the single-row commit rate of the same
//! PostgreSQL.
//!
//! One run starts PostgreSQL and nats-server (testkit), migrates `eventstoredb`, creates the `ORDERS`
//! stream and starts the event store in-process (on its own runtime, so its CPU time can be told
//! apart from the load generator's). It then measures:
//!
//! 1. the baseline: clients looping `BEGIN; INSERT one row; COMMIT` on a scratch database with 16 and
//!    64 connections, and `pgbench` (when on PATH) with the same single-row INSERT;
//! 2. appends/s and append latency through gRPC `CreateEvent` at 1, 16 and 64 clients, each client
//!    appending chains of events to its own aggregates;
//! 3. the latency from just before `CreateEvent` to the event arriving on `ORDERS.>` (matched by
//!    `Nats-Msg-Id`), for every run above and for a paced run at half the 16-client rate;
//! 4. the append path alone (nats-server stopped, events wait in the outbox) and the relay alone
//!    (nats-server back, the outbox drains).
//!
//! ```text
//! cargo bench -p eventstore --bench append -- [--secs N] [--configs 256x4,64x8] [--rate N]
//!     [--skip-isolation] [--no-analyze]
//! ```
//!
//! or `BENCH_SECS`, `BENCH_CONFIGS`, `BENCH_RATE`. A configuration is `batch_size x batch_workers`
//! (default: `EVENTSTORE_BATCH_SIZE` x `EVENTSTORE_BATCH_WORKERS`, else the event store's defaults).
//!
//! After a one-second warm-up the tables are analyzed (as autovacuum would on a live database);
//! `--no-analyze` measures a fresh store whose connections cached plans made for empty tables.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use eventstore::{App, Config};
use eventstore_proto::event_store_client::EventStoreClient;
use eventstore_proto::{CreateEventRequest, Event};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use sqlx::{Connection as _, Executor as _, PgConnection};
use testkit::{NatsServer, Postgres, procfs};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

/// Events appended to one aggregate before a client moves on to a new one.
const CHAIN: i64 = 10;
/// gRPC connections the clients share (round robin).
const CHANNELS: usize = 4;
/// Client counts of the closed-loop append runs.
const CLIENTS: [usize; 3] = [1, 16, 64];
/// Longest wait for the relay to publish what a run appended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
const SCRATCH_DB: &str = "benchscratch";

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    // Two runtimes with named threads: per-thread CPU time separates the event store from the load.
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("client runtime")?;
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("eventstore")
        .enable_all()
        .build()
        .context("event store runtime")?;

    let postgres = Postgres::start().context("PostgreSQL starts")?;
    let mut nats = NatsServer::start().context("nats-server starts")?;
    let outcome = client_runtime.block_on(run(
        &options,
        &postgres,
        &mut nats,
        server_runtime.handle().clone(),
    ));
    server_runtime.shutdown_timeout(Duration::from_secs(5));
    drop(client_runtime);
    outcome
}

struct Options {
    secs: u64,
    configs: Vec<(u16, u8)>,
    rate: Option<f64>,
    skip_isolation: bool,
    analyze: bool,
    args: Vec<String>,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut secs = env_parse::<u64>("BENCH_SECS")?.unwrap_or(5);
        let mut configs = std::env::var("BENCH_CONFIGS").ok();
        let mut rate = env_parse::<f64>("BENCH_RATE")?;
        let mut skip_isolation = false;
        let mut analyze = true;
        let mut args = Vec::new();
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            if arg == "--bench" {
                // cargo bench passes --bench to every harness = false target.
                continue;
            }
            if arg == "--skip-isolation" || arg == "--no-analyze" {
                skip_isolation |= arg == "--skip-isolation";
                analyze &= arg != "--no-analyze";
                args.push(arg);
                continue;
            }
            let value = argv
                .next()
                .with_context(|| format!("{arg} needs a value"))?;
            match arg.as_str() {
                "--secs" => secs = value.parse().context("--secs")?,
                "--configs" => configs = Some(value.clone()),
                "--rate" => rate = Some(value.parse().context("--rate")?),
                other => bail!(
                    "unknown argument {other:?}; use --secs N, --configs 256x4,64x8, --rate N, --skip-isolation, --no-analyze"
                ),
            }
            args.push(arg);
            args.push(value);
        }
        let defaults = Config::new(
            "127.0.0.1:0".parse().context("address")?,
            String::new(),
            String::new(),
        );
        let configs = match configs {
            Some(list) => {
                list.split(',')
                    .map(|item| {
                        let (size, workers) = item.trim().split_once('x').with_context(|| {
                            format!("configuration {item:?} is not SIZExWORKERS")
                        })?;
                        Ok((
                            size.parse()
                                .with_context(|| format!("batch size in {item:?}"))?,
                            workers
                                .parse()
                                .with_context(|| format!("batch workers in {item:?}"))?,
                        ))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
            None => vec![(
                env_parse("EVENTSTORE_BATCH_SIZE")?.unwrap_or(defaults.batch_size),
                env_parse("EVENTSTORE_BATCH_WORKERS")?.unwrap_or(defaults.batch_workers),
            )],
        };
        if secs == 0 || configs.is_empty() {
            bail!("nothing to measure: --secs must be > 0 and --configs non-empty");
        }
        if configs
            .iter()
            .any(|&(size, workers)| size == 0 || workers == 0)
        {
            bail!("batch size and batch workers must be at least 1");
        }
        Ok(Options {
            secs,
            configs,
            rate,
            skip_isolation,
            analyze,
            args,
        })
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.secs)
    }

    fn command(&self) -> String {
        let mut command = String::new();
        for name in [
            "BENCH_SECS",
            "BENCH_CONFIGS",
            "BENCH_RATE",
            "EVENTSTORE_BATCH_SIZE",
            "EVENTSTORE_BATCH_WORKERS",
        ] {
            if let Ok(value) = std::env::var(name) {
                let _ = write!(command, "{name}={value} ");
            }
        }
        command.push_str("cargo bench -p eventstore --bench append");
        if !self.args.is_empty() {
            command.push_str(" -- ");
            command.push_str(&self.args.join(" "));
        }
        command
    }
}

fn env_parse<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(value) => Ok(Some(value.trim().parse().with_context(|| name.to_owned())?)),
        Err(_) => Ok(None),
    }
}

async fn run(
    options: &Options,
    postgres: &Postgres,
    nats: &mut NatsServer,
    server: Handle,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let database_url = postgres
        .create_database("eventstoredb")
        .await
        .context("eventstoredb created")?;
    let pool = sqlx::PgPool::connect(&database_url)
        .await
        .context("connect to eventstoredb")?;
    eventstore::MIGRATOR
        .run(&pool)
        .await
        .context("migrations run")?;
    let nats_client = async_nats::connect(nats.url())
        .await
        .context("connect to NATS")?;
    async_nats::jetstream::new(nats_client.clone())
        .create_stream(pipeline_runtime::stream::orders_stream_config(1))
        .await
        .context("ORDERS stream created")?;

    let machine = Machine::read(&pool).await?;
    let postmaster = machine.postmaster;
    machine.print(options);

    // 1. Baseline.
    let scratch_url = postgres
        .create_database(SCRATCH_DB)
        .await
        .context("scratch database created")?;
    let mut conn = PgConnection::connect(&scratch_url)
        .await
        .context("connect to the scratch database")?;
    conn.execute(
        "CREATE TABLE scratch (id BIGSERIAL PRIMARY KEY, client INT NOT NULL, payload TEXT NOT NULL)",
    )
    .await
    .context("scratch table created")?;
    let _ = conn.close().await;
    let mut baselines = Vec::new();
    for connections in [16, 64] {
        let measured = baseline(&scratch_url, connections, options.duration(), postmaster)
            .await
            .with_context(|| format!("baseline with {connections} connections"))?;
        baselines.push(measured);
    }
    let pgbench = run_pgbench(postgres, options.secs).await;

    println!();
    println!(
        "== baseline: BEGIN; INSERT one ~300-byte row; COMMIT (scratch database, same server) =="
    );
    println!(
        "{:<26} {:>11} {:>9} {:>9}   CPU (cores)",
        "", "commits/s", "p50 ms", "p99 ms"
    );
    for b in &baselines {
        println!(
            "{:<26} {:>11.0} {:>9} {:>9}   {}",
            format!("sqlx, {} connections", b.clients),
            b.rate(),
            ms(b.p(0.50)),
            ms(b.p(0.99)),
            b.cpu
        );
    }
    match &pgbench {
        Ok(Some(result)) => println!(
            "{:<26} {:>11.0} {:>9} {:>9}   (`{}`)",
            "pgbench -c 16 -j 2", result.tps, result.latency_ms, "-", result.command
        ),
        Ok(None) => println!("pgbench: not on PATH, skipped"),
        Err(err) => println!("pgbench: failed, skipped: {err:#}"),
    }

    // JetStream watcher: every message on ORDERS.> is matched to its append by Nats-Msg-Id.
    let watch = Arc::new(Watch::default());
    let mut subscription = nats_client
        .subscribe("ORDERS.>")
        .await
        .context("subscribe to ORDERS.>")?;
    nats_client
        .flush()
        .await
        .context("flush the subscription")?;
    let watcher = {
        let watch = Arc::clone(&watch);
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(pipeline_runtime::stream::headers::MSG_ID))
                    .and_then(|v| Uuid::parse_str(v.as_str()).ok());
                if let Some(id) = id {
                    watch.arrived(id);
                }
            }
        })
    };

    // 2-4. The event store, once per configuration.
    let mut summaries = Vec::new();
    for &(batch_size, batch_workers) in &options.configs {
        let summary = event_store_runs(
            options,
            &server,
            nats,
            &database_url,
            &watch,
            postmaster,
            (batch_size, batch_workers),
        )
        .await
        .with_context(|| format!("event store with batch {batch_size}x{batch_workers}"))?;
        summary.print(&baselines, &pgbench);
        summaries.push(summary);
    }
    watcher.abort();

    if summaries.len() > 1 {
        println!();
        println!("== configurations compared ==");
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "batch_size x workers", "@1/s", "@16/s", "@64/s", "÷base@16", "÷base@64"
        );
        for s in &summaries {
            let at = |clients: usize| {
                s.runs
                    .iter()
                    .find(|r| r.clients == clients && r.pace.is_none() && r.watched)
                    .map_or(0.0, AppendRun::rate)
            };
            println!(
                "{:<22} {:>10.0} {:>10.0} {:>10.0} {:>10.2} {:>10.2}",
                format!("{} x {}", s.batch_size, s.batch_workers),
                at(1),
                at(16),
                at(64),
                at(64) / baselines[0].rate(),
                at(64) / baselines[1].rate(),
            );
        }
    }
    println!();
    println!(
        "total bench time {:.0} s; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    pool.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Machine

struct Machine {
    postmaster: Option<u32>,
    nproc: usize,
    kernel: String,
    cpu_model: String,
    postgres_version: String,
    settings: String,
}

impl Machine {
    async fn read(pool: &sqlx::PgPool) -> anyhow::Result<Machine> {
        let (version, fsync, sync_commit, isolation, backend): (
            String,
            String,
            String,
            String,
            i32,
        ) = sqlx::query_as(
            "SELECT version(), current_setting('fsync'), current_setting('synchronous_commit'), \
                 current_setting('default_transaction_isolation'), pg_backend_pid()",
        )
        .fetch_one(pool)
        .await
        .context("read the PostgreSQL settings")?;
        let postmaster = u32::try_from(backend)
            .ok()
            .and_then(|pid| procfs::process(&pid.to_string()))
            .map(|stat| stat.ppid);
        let kernel = std::process::Command::new("uname")
            .arg("-r")
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|k| !k.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .ok()
                    .map(|k| k.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Ok(Machine {
            postmaster,
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            kernel,
            cpu_model,
            postgres_version: version.split(" on ").next().unwrap_or(&version).to_owned(),
            settings: format!(
                "fsync={fsync}, synchronous_commit={sync_commit}, default_transaction_isolation={isolation}"
            ),
        })
    }

    fn print(&self, options: &Options) {
        println!("== eventstore append benchmark ==");
        println!("command:  {}", options.command());
        println!(
            "machine:  nproc {}, kernel {} ({}), load average {}",
            self.nproc,
            self.kernel,
            self.cpu_model,
            loadavg()
        );
        println!("database: {} ({})", self.postgres_version, self.settings);
        println!(
            "runs:     {} s each after a 1 s warm-up at 64 clients{}; payload {} bytes of JSON; chains of {CHAIN} events per aggregate; {CHANNELS} gRPC channels",
            options.secs,
            if options.analyze {
                " and ANALYZE"
            } else {
                " (no ANALYZE)"
            },
            payload("00000000-0000-0000-0000-000000000000", 1).len()
        );
        println!(
            "CPU:      cores used during a run, from /proc: pg = this PostgreSQL, nats = this nats-server, \
             es = event store threads, client = load generator threads, other = rest of the machine"
        );
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

#[derive(Default, Clone, Copy)]
struct CpuSnapshot {
    postgres: u64,
    nats: u64,
    eventstore: u64,
    client: u64,
    machine_busy: u64,
}

impl CpuSnapshot {
    fn take(postmaster: Option<u32>) -> CpuSnapshot {
        let mut snapshot = CpuSnapshot::default();
        let me = std::process::id();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Some(stat) = procfs::stat(&entry.path().join("stat")) else {
                    continue;
                };
                if Some(pid) == postmaster || (Some(stat.ppid) == postmaster) {
                    snapshot.postgres += stat.own_ticks + stat.reaped_ticks;
                } else if stat.ppid == me && stat.comm == "nats-server" {
                    snapshot.nats += stat.own_ticks + stat.reaped_ticks;
                }
            }
        }
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Some(stat) = procfs::stat(&task.path().join("stat")) else {
                    continue;
                };
                if stat.comm.starts_with("eventstore") {
                    snapshot.eventstore += stat.own_ticks + stat.reaped_ticks;
                } else {
                    snapshot.client += stat.own_ticks + stat.reaped_ticks;
                }
            }
        }
        snapshot.machine_busy = procfs::machine_busy_ticks().unwrap_or(0);
        snapshot
    }
}

/// Cores used by each party between two snapshots.
#[derive(Default, Clone, Copy)]
struct CpuUse {
    postgres: f64,
    nats: f64,
    eventstore: f64,
    client: f64,
    other: f64,
}

impl CpuUse {
    fn between(before: CpuSnapshot, after: CpuSnapshot, elapsed: Duration) -> CpuUse {
        let secs = elapsed.as_secs_f64().max(1e-3) * procfs::TICKS_PER_SECOND;
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let postgres = cores(before.postgres, after.postgres);
        let nats = cores(before.nats, after.nats);
        let eventstore = cores(before.eventstore, after.eventstore);
        let client = cores(before.client, after.client);
        let busy = cores(before.machine_busy, after.machine_busy);
        CpuUse {
            postgres,
            nats,
            eventstore,
            client,
            other: (busy - postgres - nats - eventstore - client).max(0.0),
        }
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pg {:.2} nats {:.2} es {:.2} client {:.2} other {:.2}",
            self.postgres, self.nats, self.eventstore, self.client, self.other
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Baseline

struct Baseline {
    clients: usize,
    commits: u64,
    elapsed: Duration,
    latency: Vec<Duration>,
    cpu: CpuUse,
}

impl Baseline {
    fn rate(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&self, q: f64) -> Option<Duration> {
        percentile(&self.latency, q)
    }
}

async fn baseline(
    url: &str,
    connections: usize,
    duration: Duration,
    postmaster: Option<u32>,
) -> anyhow::Result<Baseline> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(
            PgConnection::connect(url)
                .await
                .context("connect to the scratch database")?,
        );
    }
    let payload = payload("00000000-0000-0000-0000-000000000000", 1);
    let cpu_before = CpuSnapshot::take(postmaster);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for (client, mut conn) in (0_i32..).zip(conns) {
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut latency = Vec::with_capacity(16 * 1024);
            while Instant::now() < deadline {
                let began = Instant::now();
                let mut tx = conn.begin().await.context("BEGIN")?;
                sqlx::query("INSERT INTO scratch (client, payload) VALUES ($1, $2)")
                    .bind(client)
                    .bind(&payload)
                    .execute(&mut *tx)
                    .await
                    .context("INSERT")?;
                tx.commit().await.context("COMMIT")?;
                latency.push(began.elapsed());
            }
            anyhow::Ok((conn, latency))
        });
    }
    let mut latency = Vec::new();
    let mut conns = Vec::with_capacity(connections);
    while let Some(joined) = tasks.join_next().await {
        let (conn, client_latency) = joined.context("baseline client panicked")??;
        latency.extend(client_latency);
        conns.push(conn);
    }
    let elapsed = start.elapsed();
    // Before the connections close, so their backends' CPU time is still counted.
    let cpu = CpuUse::between(cpu_before, CpuSnapshot::take(postmaster), elapsed);
    for conn in conns {
        let _ = conn.close().await;
    }
    latency.sort_unstable();
    Ok(Baseline {
        clients: connections,
        commits: latency.len() as u64,
        elapsed,
        latency,
        cpu,
    })
}

struct PgbenchResult {
    tps: f64,
    latency_ms: String,
    command: String,
}

async fn run_pgbench(postgres: &Postgres, secs: u64) -> anyhow::Result<Option<PgbenchResult>> {
    let Some(binary) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbench"))
            .find(|candidate| candidate.is_file())
    }) else {
        return Ok(None);
    };
    let script = std::env::temp_dir().join(format!("eventstore-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "INSERT INTO scratch (client, payload) VALUES (:client_id, repeat('x', 300));\n",
    )
    .with_context(|| format!("writing {}", script.display()))?;
    let port = postgres.port().to_string();
    let secs = secs.to_string();
    let script_arg = script.to_string_lossy().into_owned();
    let args: Vec<&str> = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "root",
        "-c",
        "16",
        "-j",
        "2",
        "-T",
        &secs,
        "-n",
        "-f",
        &script_arg,
        SCRATCH_DB,
    ];
    let command = format!("{} {}", binary.display(), args.join(" "));
    let owned: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(&binary);
        for variable in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
            "PGSERVICE",
        ] {
            command.env_remove(variable);
        }
        command.args(&owned).output()
    })
    .await
    .context("pgbench task")?
    .context("running pgbench")?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench exited with {}: {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
    };
    let tps = field("tps = ")
        .and_then(|t| t.parse::<f64>().ok())
        .with_context(|| format!("no tps in the pgbench output:\n{stdout}"))?;
    Ok(Some(PgbenchResult {
        tps,
        latency_ms: field("latency average = ").unwrap_or_else(|| "-".into()),
        command,
    }))
}

// ---------------------------------------------------------------------------------------------
// JetStream arrival matching

#[derive(Default)]
struct Watch {
    inner: Mutex<WatchInner>,
}

#[derive(Default)]
struct WatchInner {
    pending: HashMap<Uuid, Instant>,
    arrived: Vec<Duration>,
}

impl Watch {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expect(&self, id: Uuid, at: Instant) {
        self.lock().pending.insert(id, at);
    }

    fn forget(&self, id: Uuid) {
        self.lock().pending.remove(&id);
    }

    fn arrived(&self, id: Uuid) {
        let mut inner = self.lock();
        if let Some(at) = inner.pending.remove(&id) {
            inner.arrived.push(at.elapsed());
        }
    }

    fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// The latencies seen so far and the ids never seen; starts afresh.
    fn take(&self) -> (Vec<Duration>, usize) {
        let mut inner = self.lock();
        let missing = inner.pending.len();
        inner.pending.clear();
        (std::mem::take(&mut inner.arrived), missing)
    }
}

// ---------------------------------------------------------------------------------------------
// Event store runs

struct Instance {
    addr: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Instance {
    async fn start(server: &Handle, config: Config) -> anyhow::Result<Instance> {
        // Built on the event store runtime so its listener, pool and NATS client live there.
        let app = server
            .spawn(App::build(config))
            .await
            .context("event store build task")?
            .context("event store builds")?;
        let addr = app.local_addr();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = server.spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(Instance {
            addr,
            shutdown: Some(shutdown),
            task,
        })
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .context("the event store did not stop within 30 s")?
            .context("event store task")?
            .context("event store stopped with an error")
    }
}

struct AppendRun {
    label: String,
    clients: usize,
    pace: Option<f64>,
    /// Whether JetStream arrival was measured (nats-server was up).
    watched: bool,
    appends: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latency: Vec<Duration>,
    jetstream: Vec<Duration>,
    missing: usize,
    backlog_at_end: i64,
    drain: Duration,
    cpu: CpuUse,
}

impl AppendRun {
    fn rate(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }
}

struct RelayAlone {
    backlog: i64,
    rate: f64,
    cpu: CpuUse,
}

struct ConfigSummary {
    batch_size: u16,
    batch_workers: u8,
    warmup_appends: u64,
    runs: Vec<AppendRun>,
    relay: Option<RelayAlone>,
    db: DbStats,
    plans: Vec<String>,
}

/// Queries the benchmark itself sent to eventstoredb (outbox polling), to tell them from the store's.
static OWN_QUERIES: AtomicU64 = AtomicU64::new(0);

/// PostgreSQL's counters for eventstoredb over one configuration (reset at its start).
#[derive(Default)]
struct DbStats {
    commits: i64,
    rollbacks: i64,
    /// (table, seq_scan, seq_tup_read, idx_scan, n_tup_ins, n_tup_del)
    tables: Vec<(String, i64, i64, i64, i64, i64)>,
}

async fn reset_stats(url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect to eventstoredb")?;
    conn.execute("SELECT pg_stat_reset()")
        .await
        .context("pg_stat_reset")?;
    let _ = conn.close().await;
    Ok(())
}

async fn db_stats(url: &str) -> anyhow::Result<DbStats> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect to eventstoredb")?;
    let (commits, rollbacks): (i64, i64) = sqlx::query_as(
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .context("pg_stat_database")?;
    let tables = sqlx::query_as(
        "SELECT relname::TEXT, seq_scan, seq_tup_read, COALESCE(idx_scan, 0), n_tup_ins, n_tup_del \
         FROM pg_stat_user_tables WHERE relname IN ('events', 'outbox') ORDER BY relname",
    )
    .fetch_all(&mut conn)
    .await
    .context("pg_stat_user_tables")?;
    let _ = conn.close().await;
    Ok(DbStats {
        commits,
        rollbacks,
        tables,
    })
}

/// The plans PostgreSQL picks for the append transaction's reads and the relay's claim, custom and
/// generic (sqlx prepares its statements, so after five runs the generic plan may be used).
async fn plans(url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect to eventstoredb")?;
    let (aggregates,): (Vec<String>,) = sqlx::query_as(
        "SELECT COALESCE(array_agg(aggregate_id), '{}') FROM \
         (SELECT aggregate_id FROM events GROUP BY aggregate_id LIMIT 16) AS t",
    )
    .fetch_one(&mut conn)
    .await
    .context("sample aggregates")?;
    let (ids,): (Vec<Uuid>,) = sqlx::query_as(
        "SELECT COALESCE(array_agg(event_id), '{}') FROM (SELECT event_id FROM events LIMIT 16) AS t",
    )
    .fetch_one(&mut conn)
    .await
    .context("sample event ids")?;
    let (rows, bytes): (i64, i64) =
        sqlx::query_as("SELECT count(*), pg_total_relation_size('events') FROM events")
            .fetch_one(&mut conn)
            .await
            .context("events size")?;
    let mut lines = vec![format!(
        "events: {rows} rows, {:.1} MB with indexes",
        bytes as f64 / 1e6
    )];
    conn.execute(
        "PREPARE current_versions(TEXT[]) AS SELECT aggregate_id, MAX(aggregate_version) FROM events \
         WHERE aggregate_id = ANY($1) GROUP BY aggregate_id; \
         PREPARE by_ids(UUID[]) AS SELECT event_id FROM events WHERE event_id = ANY($1); \
         PREPARE claim(INT8, UUID[], INT8) AS UPDATE outbox SET created_at = now() WHERE event_id IN ( \
         SELECT event_id FROM outbox \
         WHERE created_at <= now() - $1 * INTERVAL '1 millisecond' OR event_id = ANY($2) \
         ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING event_id, aggregate_id, aggregate_version",
    )
    .await
    .context("prepare the statements to explain")?;
    let aggregates = format!("'{{{}}}'", aggregates.join(","));
    let ids = format!(
        "'{{{}}}'",
        ids.iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    for mode in ["force_custom_plan", "force_generic_plan"] {
        conn.execute(format!("SET plan_cache_mode = {mode}").as_str())
            .await
            .context("plan_cache_mode")?;
        for (name, args) in [
            ("current_versions", aggregates.as_str()),
            ("by_ids", ids.as_str()),
            // EXPLAIN without ANALYZE does not run the UPDATE.
            ("claim", "6000, '{}', 512"),
        ] {
            let plan: Vec<String> =
                sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) EXECUTE {name}({args})"))
                    .fetch_all(&mut conn)
                    .await
                    .with_context(|| format!("explain {name}"))?;
            let plan = elide_arrays(&plan.join(" / "));
            lines.push(format!("{mode:<18} {name:<16} {plan}"));
        }
    }
    let _ = conn.close().await;
    Ok(lines)
}

#[allow(clippy::too_many_arguments)]
async fn event_store_runs(
    options: &Options,
    server: &Handle,
    nats: &mut NatsServer,
    database_url: &str,
    watch: &Arc<Watch>,
    postmaster: Option<u32>,
    (batch_size, batch_workers): (u16, u8),
) -> anyhow::Result<ConfigSummary> {
    reset_stats(database_url).await?;
    // The benchmark's own polling of the outbox: one connection, closed before the stats are read.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .context("connect to eventstoredb")?;
    let pool = &pool;
    OWN_QUERIES.store(0, Ordering::Relaxed);
    let mut config = Config::new(
        "127.0.0.1:0".parse().context("address")?,
        database_url,
        nats.url(),
    );
    config.batch_size = batch_size;
    config.batch_workers = batch_workers;
    config.db_connections = config.db_connections.max(u32::from(batch_workers) + 4);
    let instance = Instance::start(server, config).await?;
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        channels.push(
            Endpoint::from_shared(format!("http://{}", instance.addr))
                .context("endpoint")?
                .connect()
                .await
                .context("gRPC connects to the event store")?,
        );
    }
    let duration = options.duration();

    // Warm-up: opens the pool's connections and primes the caches; not measured.
    let warmup = append_load(&channels, 64, Duration::from_secs(1), None, None).await;
    wait_for_outbox(pool, DRAIN_TIMEOUT).await?;
    if options.analyze {
        // What autovacuum would have done on a live database. It also invalidates the plans the
        // store's connections cached while the tables were empty (sequential scans of `events`).
        sqlx::query("ANALYZE events, outbox")
            .execute(pool)
            .await
            .context("ANALYZE")?;
    }

    let run = |label: String, clients: usize, pace: Option<f64>| {
        let channels = &channels;
        async move {
            let mut measured = measure(channels, clients, duration, pace, watch, pool, postmaster)
                .await
                .with_context(|| format!("append run {label}"))?;
            measured.label = label;
            anyhow::Ok(measured)
        }
    };
    let mut runs = Vec::new();
    for clients in CLIENTS {
        runs.push(run(format!("{clients} clients"), clients, None).await?);
    }
    let rate16 = runs
        .iter()
        .find(|r| r.clients == 16)
        .map_or(100.0, AppendRun::rate);
    let paced = options.rate.unwrap_or((rate16 / 2.0).max(10.0));
    runs.push(run(format!("16 clients paced {paced:.0}/s"), 16, Some(paced)).await?);

    let mut relay = None;
    if !options.skip_isolation {
        // The append path alone: nats-server down, the relay idles, events wait in the outbox.
        nats.stop().context("stop nats-server")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu_before = CpuSnapshot::take(postmaster);
        let load = append_load(&channels, 64, duration, None, None).await;
        let cpu = CpuUse::between(cpu_before, CpuSnapshot::take(postmaster), load.elapsed);
        let backlog = outbox_len(pool).await?;
        let mut alone = load.into_run("64 clients, NATS down", 64, None, false);
        alone.cpu = cpu;
        alone.backlog_at_end = backlog;
        runs.push(alone);
        // The relay alone: nats-server back, nothing appended, the outbox drains.
        nats.start_again().context("start nats-server again")?;
        relay = Some(relay_alone(pool, backlog, postmaster).await?);
    }

    instance.stop().await?;
    pool.close().await;
    // Closed backends have flushed their statistics.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = db_stats(database_url).await?;
    let plans = plans(database_url).await?;
    Ok(ConfigSummary {
        batch_size,
        batch_workers,
        warmup_appends: warmup.latency.len() as u64,
        runs,
        relay,
        db,
        plans,
    })
}

async fn measure(
    channels: &[Channel],
    clients: usize,
    duration: Duration,
    pace: Option<f64>,
    watch: &Arc<Watch>,
    pool: &sqlx::PgPool,
    postmaster: Option<u32>,
) -> anyhow::Result<AppendRun> {
    let _ = watch.take();
    let cpu_before = CpuSnapshot::take(postmaster);
    let load = append_load(channels, clients, duration, pace, Some(watch)).await;
    let cpu = CpuUse::between(cpu_before, CpuSnapshot::take(postmaster), load.elapsed);
    let ended = Instant::now();
    let backlog_at_end = outbox_len(pool).await?;
    // Wait for the relay to publish everything appended (and the subscriber to see it).
    while watch.pending() > 0 && ended.elapsed() < DRAIN_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = ended.elapsed();
    let (mut jetstream, missing) = watch.take();
    jetstream.sort_unstable();
    wait_for_outbox(pool, DRAIN_TIMEOUT).await?;
    let mut run = load.into_run("", clients, pace, true);
    run.jetstream = jetstream;
    run.missing = missing;
    run.backlog_at_end = backlog_at_end;
    run.drain = drain;
    run.cpu = cpu;
    Ok(run)
}

struct Load {
    elapsed: Duration,
    latency: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Load {
    fn into_run(self, label: &str, clients: usize, pace: Option<f64>, watched: bool) -> AppendRun {
        AppendRun {
            label: label.to_owned(),
            clients,
            pace,
            watched,
            appends: self.latency.len() as u64,
            errors: self.errors,
            first_error: self.first_error,
            elapsed: self.elapsed,
            latency: self.latency,
            jetstream: Vec::new(),
            missing: 0,
            backlog_at_end: 0,
            drain: Duration::ZERO,
            cpu: CpuUse::default(),
        }
    }
}

/// `clients` concurrent clients appending for `duration`, closed loop, or paced at `pace` appends/s
/// in total.
async fn append_load(
    channels: &[Channel],
    clients: usize,
    duration: Duration,
    pace: Option<f64>,
    watch: Option<&Arc<Watch>>,
) -> Load {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for index in 0..clients {
        let client = EventStoreClient::new(channels[index % channels.len()].clone());
        let watch = watch.map(Arc::clone);
        let interval = pace.map(|rate| Duration::from_secs_f64(clients as f64 / rate));
        // Paced clients start spread over one interval, not all at once.
        let first =
            start + interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / clients as f64));
        tasks.spawn(append_client(client, deadline, first, interval, watch));
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
            Err(err) => {
                load.errors += 1;
                load.first_error
                    .get_or_insert_with(|| format!("client task failed: {err}"));
            }
        }
    }
    load.elapsed = start.elapsed();
    load.latency.sort_unstable();
    load
}

struct ClientOutcome {
    latency: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

async fn append_client(
    mut client: EventStoreClient<Channel>,
    deadline: Instant,
    first: Instant,
    interval: Option<Duration>,
    watch: Option<Arc<Watch>>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        latency: Vec::with_capacity(4096),
        errors: 0,
        first_error: None,
    };
    let mut ticker = interval.map(|period| {
        let mut ticker = tokio::time::interval_at(first, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let mut aggregate = Uuid::new_v4().to_string();
    let mut version = 0_i64;
    loop {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let event_id = Uuid::new_v4();
        let request = CreateEventRequest {
            event: Some(event(event_id, &aggregate, version)),
            expected_version: version,
        };
        let began = Instant::now();
        if let Some(watch) = &watch {
            watch.expect(event_id, began);
        }
        match client.create_event(request).await {
            Ok(response) => {
                outcome.latency.push(began.elapsed());
                version = response.into_inner().aggregate_version;
                if version >= CHAIN {
                    aggregate = Uuid::new_v4().to_string();
                    version = 0;
                }
            }
            Err(status) => {
                if let Some(watch) = &watch {
                    watch.forget(event_id);
                }
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                // Start over on a fresh aggregate so one failure does not cascade into conflicts.
                aggregate = Uuid::new_v4().to_string();
                version = 0;
                // Do not spin on a failing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    outcome
}

fn event(event_id: Uuid, aggregate: &str, version: i64) -> Event {
    Event {
        event_id: event_id.to_string(),
        event_type: if version == 0 {
            "created"
        } else {
            "paymentdebited"
        }
        .into(),
        aggregate_id: aggregate.to_owned(),
        aggregate_type: "order".into(),
        event_data: payload(aggregate, version),
        stream: "ORDERS".into(),
        metadata: HashMap::from([
            (
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            ),
            ("correlation_id".to_owned(), aggregate.to_owned()),
        ]),
        ..Default::default()
    }
}

/// An order-like JSON object of about 300 bytes.
fn payload(aggregate: &str, version: i64) -> String {
    serde_json::json!({
        "order_id": aggregate,
        "customer_id": "5f0c9a7e-3b1d-4c2a-9e8f-7a6b5c4d3e2f",
        "step": version,
        "items": [
            { "sku": "SKU-000123", "quantity": 2, "unit_price": "19.90" },
            { "sku": "SKU-004711", "quantity": 1, "unit_price": "5.00" },
        ],
        "total": "44.80",
        "currency": "EUR",
        "shipping": { "street": "1 Long Street", "city": "Springfield", "zip": "12345", "country": "DE" },
    })
    .to_string()
}

async fn outbox_len(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    OWN_QUERIES.fetch_add(1, Ordering::Relaxed);
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
        .context("count the outbox")?;
    Ok(n)
}

async fn wait_for_outbox(pool: &sqlx::PgPool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = outbox_len(pool).await?;
        if n == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the outbox still holds {n} events after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Times the relay draining `backlog` outbox rows with nothing else going on. The clock starts at
/// the first row published, so reconnecting to NATS is not counted.
async fn relay_alone(
    pool: &sqlx::PgPool,
    backlog: i64,
    postmaster: Option<u32>,
) -> anyhow::Result<RelayAlone> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last_full = (Instant::now(), CpuSnapshot::take(postmaster));
    let mut remaining = outbox_len(pool).await?;
    while remaining >= backlog && backlog > 0 {
        if Instant::now() >= deadline {
            bail!("the relay published nothing within {DRAIN_TIMEOUT:?} after NATS came back");
        }
        last_full = (Instant::now(), CpuSnapshot::take(postmaster));
        tokio::time::sleep(Duration::from_millis(20)).await;
        remaining = outbox_len(pool).await?;
    }
    while remaining > 0 {
        if Instant::now() >= deadline {
            bail!("the outbox still holds {remaining} events after {DRAIN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        remaining = outbox_len(pool).await?;
    }
    let elapsed = last_full.0.elapsed();
    Ok(RelayAlone {
        backlog,
        rate: backlog as f64 / elapsed.as_secs_f64(),
        cpu: CpuUse::between(last_full.1, CpuSnapshot::take(postmaster), elapsed),
    })
}

// ---------------------------------------------------------------------------------------------
// Report

/// A plan line with its array literals (16 UUIDs each) shortened to `'{…}'`.
fn elide_arrays(plan: &str) -> String {
    let mut out = String::with_capacity(plan.len());
    let mut rest = plan;
    while let Some(start) = rest.find("'{") {
        let Some(len) = rest[start..].find("}'") else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str("'{…}'");
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Nearest-rank percentile by hdrhistogram, in microseconds to three significant digits (exact
/// below 2,048 µs, within 0.1 % above).
fn percentile(samples: &[Duration], q: f64) -> Option<Duration> {
    let mut histogram = Histogram::<u64>::new(3).expect("three significant digits");
    for sample in samples {
        let micros = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        if histogram.record(micros).is_err() {
            histogram.saturating_record(micros);
        }
    }
    (!histogram.is_empty()).then(|| Duration::from_micros(histogram.value_at_quantile(q)))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
}

impl ConfigSummary {
    fn print(&self, baselines: &[Baseline], pgbench: &anyhow::Result<Option<PgbenchResult>>) {
        println!();
        println!(
            "== event store: gRPC CreateEvent, batch_size={} batch_workers={} ==",
            self.batch_size, self.batch_workers
        );
        println!(
            "{:<24} {:>10} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>7} {:>8} {:>7}",
            "run",
            "appends/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "JS p50",
            "JS p99",
            "backlog",
            "drain ms",
            "missing"
        );
        for r in &self.runs {
            let (js50, js99, drain, missing) = if r.watched {
                (
                    ms(percentile(&r.jetstream, 0.50)),
                    ms(percentile(&r.jetstream, 0.99)),
                    format!("{:.0}", r.drain.as_secs_f64() * 1e3),
                    r.missing.to_string(),
                )
            } else {
                ("-".into(), "-".into(), "-".into(), "-".into())
            };
            println!(
                "{:<24} {:>10.0} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>7} {:>8} {:>7}",
                r.label,
                r.rate(),
                ms(percentile(&r.latency, 0.50)),
                ms(percentile(&r.latency, 0.99)),
                r.errors,
                js50,
                js99,
                r.backlog_at_end,
                drain,
                missing,
            );
        }
        for r in self.runs.iter().filter(|r| r.first_error.is_some()) {
            println!(
                "  {}: first error: {}",
                r.label,
                r.first_error.as_deref().unwrap_or_default()
            );
        }
        if let Some(relay) = &self.relay {
            println!(
                "{:<24} {:>10.0}  (relay alone: {} outbox rows published to JetStream, nothing appended)",
                "relay drain events/s", relay.rate, relay.backlog
            );
        }
        println!("CPU (cores) per run:");
        for r in &self.runs {
            println!("  {:<24} {}", r.label, r.cpu);
        }
        if let Some(relay) = &self.relay {
            println!("  {:<24} {}", "relay drain", relay.cpu);
        }
        let at64 = self
            .runs
            .iter()
            .find(|r| r.clients == 64 && r.pace.is_none() && r.watched)
            .map_or(0.0, AppendRun::rate);
        println!("ratios (appends/s at 64 clients, relay running):");
        for b in baselines {
            println!(
                "  ÷ baseline commits/s @{:<2} connections = {:.0} / {:.0} = {:.2}",
                b.clients,
                at64,
                b.rate(),
                at64 / b.rate()
            );
        }
        if let Ok(Some(p)) = pgbench {
            println!(
                "  ÷ pgbench tps @16                   = {:.0} / {:.0} = {:.2}",
                at64,
                p.tps,
                at64 / p.tps
            );
        }
        let appends: u64 = self.warmup_appends + self.runs.iter().map(|r| r.appends).sum::<u64>();
        let own = OWN_QUERIES.load(Ordering::Relaxed);
        let own = i64::try_from(own).unwrap_or(i64::MAX);
        let per = |n: i64| n as f64 / appends.max(1) as f64;
        println!(
            "eventstoredb over this configuration ({appends} appends incl. warm-up; the bench's own {own} outbox counts excluded from commits):"
        );
        println!(
            "  transactions: {} commits ({:.2} per append), {} rollbacks ({:.2} per append)",
            self.db.commits - own,
            per(self.db.commits - own),
            self.db.rollbacks,
            per(self.db.rollbacks)
        );
        for (table, seq_scan, seq_tup_read, idx_scan, ins, del) in &self.db.tables {
            println!(
                "  {table:<7} seq_scan {seq_scan} ({:.2}/append), seq_tup_read {seq_tup_read} ({:.0}/append), idx_scan {idx_scan} ({:.2}/append), inserted {ins}, deleted {del}",
                per(*seq_scan),
                per(*seq_tup_read),
                per(*idx_scan)
            );
        }
        println!("plans:");
        for line in &self.plans {
            println!("  {line}");
        }
        if let Some(alone) = self.runs.iter().find(|r| !r.watched) {
            println!(
                "  append path alone (NATS down) @64 ÷ baseline @16 = {:.0} / {:.0} = {:.2}",
                alone.rate(),
                baselines[0].rate(),
                alone.rate() / baselines[0].rate()
            );
        }
    }
}
