//! `devstack bench` (`scripts/bench`): benchmarks the pipeline on this machine: how many orders it
//! carries end to end, what each costs, how long one takes under load, and what the event store
//! alone appends. Prints one table per kind of step; `--write` adds them to BENCHMARKS.md.
//!
//! In one run, on one PostgreSQL (fsync on) and one nats-server of a dev stack of its own (own
//! ports and folder, started by this same launcher and stopped at the end whatever happens):
//! 1. pgbench: single-row INSERT transactions, 16 clients: the commits/s this server allows.
//! 2. Saturated: `orderctl load --rate max` on 32 connections for `--duration` (1000 customers,
//!    1-3 items), then until every accepted order is final in the read model (one count query of
//!    ordersdb every 250 ms). Orders/s = final orders ÷ (first POST → last one final). CPU seconds
//!    per order of every process (/proc), commits and rollbacks per order (pg_stat_database).
//! 3. Steady 100/s and 500/s for `--duration`: `orderctl load`, POST → final in the read model,
//!    learnt from querymodelworker's READMODEL.orders notices (no API polling): p50/p95/p99.
//! 4. Saturated again with span export on, to the stack's own trace store (its CPU is counted).
//! 5. Append: the event store alone, on a fresh stack whose ordersvc and workers are stopped:
//!    closed-loop gRPC clients (1, 16, 64) appending chains of events for `--duration` each:
//!    appends/s, CreateEvent latency, CPU of the event store, PostgreSQL and nats-server per 1000
//!    appends, commits per append, and how long the relay takes to empty the outbox ([`append`]).
//!
//! Before each saturated and steady step every database is vacuumed and analyzed and the server
//! checkpointed, so that a set of binaries measured second does not pay for the dead rows and
//! missing statistics the first one left.
//!
//! `--only` picks among steps 2-5 (pgbench always runs: the other figures are read against it).
//!
//! With `--baseline-bin DIR` (the binaries of another build, e.g. the previous commit's), steps 2,
//! 3 and 5 run with both: the baseline binaries first, then the current ones, for 2 and 3 on the
//! same PostgreSQL and nats-server (the stack restarted with the other binaries), and the other way
//! round for 5 (current first), so neither set always goes first. Each table prints the baseline
//! row, the current row and their ratio: a before/after in the same run, on a machine whose
//! pgbench moves by 2× from one day to the next. `--rounds N` measures steps 2 and 3 N times,
//! the sets' order swapped each round (baseline first in odd rounds, current first in even ones),
//! so that the machine's drift during a run falls on both sets alike; each round's pair has its
//! ratio, and a line per step says in how many rounds the current set did better.
//!
//! With `--ha`, once the single node's stacks are stopped, a second bench stack (`<dir>-ha`, ports
//! of its own) runs PostgreSQL as the HA profile (`STACK_DB=ha`: three nodes under Patroni, one
//! synchronous standby, etcd ×3, HAProxy on the PostgreSQL port), and steps 1-3 run again on it
//! with the current binaries: pgbench through HAProxy, saturated (CPU of every node, Patroni, etcd
//! member and HAProxy) and steady. The table puts its rows beside the single node's, with HA ÷
//! single.

mod append;
mod measure;
mod stack;
mod table;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use self::measure::{Snapshot, difference, per_order, snapshot};
use self::stack::{Profile, Stack, Tracing};
use self::table::{Binaries, Results, Saturated, Steady};
use crate::settings::repository_root;

/// Statistics of pg_stat_database reach it at most this long after a transaction.
const STATS_FLUSH_WAIT: Duration = Duration::from_secs(11);

/// What `devstack bench` measures with.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long each load phase sends orders, and each append run appends (`20s`, `1m`).
    #[arg(long, default_value = "20s", value_parser = order_domain::parse_duration)]
    duration: Duration,
    /// A folder with the binaries of another build (the previous commit's `target/release`): the
    /// saturated, steady and append steps run with them too, and the tables print current ÷
    /// baseline.
    #[arg(long, value_name = "DIR")]
    baseline_bin: Option<PathBuf>,
    /// With --baseline-bin: run the saturated and steady steps this many times, baseline first in
    /// odd rounds and current first in even ones, and compare each round's pair.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The steps to run, comma-separated (pgbench always runs): saturated, steady (100/s and
    /// 500/s), spans (saturated with span export on), append (the event store alone).
    #[arg(long, value_enum, value_name = "STEP,...", value_delimiter = ',', default_values_t = Step::ALL)]
    only: Vec<Step>,
    /// Add the run's tables to BENCHMARKS.md.
    #[arg(long)]
    write: bool,
    /// Seconds of the pgbench baseline.
    #[arg(long, env = "PGBENCH_SECONDS", default_value_t = 15)]
    pgbench_seconds: u32,
    /// The bench stack's folder (made by the bench, removed by the next run); the append step's
    /// stack is `<dir>-append`, the HA one's `<dir>-ha`.
    #[arg(long, env = "STACK_DIR")]
    stack_dir: Option<PathBuf>,
    /// Then measure the HA profile (STACK_DB=ha) on a second stack in `<stack dir>-ha`: pgbench,
    /// saturated and steady, beside the single node's rows.
    #[arg(long)]
    ha: bool,
}

/// A step of the bench besides pgbench (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// Orders at the rate the pipeline takes, until all are final.
    Saturated,
    /// Steady 100/s and 500/s: POST → final latencies.
    Steady,
    /// Saturated again with span export on.
    Spans,
    /// The event store alone: appends at 1, 16 and 64 clients.
    Append,
}

impl Step {
    const ALL: [Step; 4] = [Step::Saturated, Step::Steady, Step::Spans, Step::Append];
}

/// The steady steps' rates, orders/s.
const STEADY_RATES: [f64; 2] = [100.0, 500.0];

/// About how long a stack takes to stop and start again (with bootstrap and health checks), and
/// to start fresh (initdb too), on this machine: the planned duration's allowance.
const RESTART: Duration = Duration::from_secs(10);
const FRESH_START: Duration = Duration::from_secs(15);
const HA_START: Duration = Duration::from_secs(60);
/// About how long a load step goes on after its `--duration`: the last orders become final and
/// the pipeline drains.
const SETTLE: Duration = Duration::from_secs(5);

impl Args {
    fn runs(&self, step: Step) -> bool {
        self.only.contains(&step)
    }

    /// How many times the saturated and steady steps run each set: `--rounds` with a baseline,
    /// else once.
    fn rounds(&self) -> u32 {
        if self.baseline_bin.is_some() {
            self.rounds
        } else {
            1
        }
    }

    /// About how long the whole run takes, printed at its start.
    fn planned(&self) -> Duration {
        let sets = if self.baseline_bin.is_some() { 2 } else { 1 };
        let saturated = self.duration + SETTLE + STATS_FLUSH_WAIT;
        let steady = (self.duration + SETTLE) * STEADY_RATES.len() as u32;
        let pgbench = Duration::from_secs(self.pgbench_seconds.into());
        let mut pipeline = Duration::ZERO;
        if self.runs(Step::Saturated) {
            pipeline += saturated;
        }
        if self.runs(Step::Steady) {
            pipeline += steady;
        }
        let mut total = RESTART + pgbench;
        if !pipeline.is_zero() {
            // The first set runs on the stack pgbench ran on; each other one restarts it.
            let measured = sets * self.rounds();
            total += pipeline * measured + RESTART * (measured - 1);
        }
        if self.runs(Step::Spans) {
            total += RESTART + saturated;
        }
        if self.runs(Step::Append) {
            total += (FRESH_START + append::planned(self.duration)) * sets;
        }
        if self.ha {
            total += HA_START + pgbench;
            if self.runs(Step::Saturated) {
                total += saturated;
            }
            if self.runs(Step::Steady) {
                total += steady;
            }
        }
        total
    }
}

/// The sets in the order round `round` (from 1) measures them: as given (baseline first) in odd
/// rounds, the other way round in even ones.
fn round_order(sets: &[(Binaries, PathBuf)], round: u32) -> Vec<&(Binaries, PathBuf)> {
    let mut order: Vec<_> = sets.iter().collect();
    if round.is_multiple_of(2) {
        order.reverse();
    }
    order
}

/// The domain's final statuses as an SQL list: `'Approved','PaymentFailed',…`.
fn final_statuses() -> String {
    order_domain::OrderStatus::ALL
        .into_iter()
        .filter(|status| status.is_final())
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

fn step(text: &str) {
    eprintln!("\n==> {text}");
}

/// `dir` with `suffix` added to its last component: the folders of the bench's other stacks.
fn beside(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.to_path_buf().into_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Runs every step and prints the tables (and adds them to BENCHMARKS.md with `--write`).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let root = repository_root();
    // `devstack bench ARGS`, as scripts/bench ARGS.
    let command_line = std::iter::once("scripts/bench".to_owned())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    // The binaries measured are the ones beside this launcher (`target/release/`).
    let target = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("the folder of this executable")?;
    let orderctl = target.join("orderctl");
    if !orderctl.is_file() {
        bail!(
            "{} is missing (cargo build --release --bins)",
            orderctl.display()
        );
    }
    if let Some(dir) = &args.baseline_bin
        && !dir.join("eventstore").is_file()
    {
        bail!(
            "--baseline-bin {}: no eventstore there (copy another build's target/release binaries into it)",
            dir.display()
        );
    }
    let pgbench = testkit::host::find_postgres_tool("pgbench")
        .context("pgbench is needed (apt-get install -y postgresql-client)")?;
    let stack_dir = args
        .stack_dir
        .clone()
        .unwrap_or_else(|| root.join(".stack-bench"));
    // The sets of binaries, in the order the pipeline steps run them.
    let sets: Vec<(Binaries, PathBuf)> = args
        .baseline_bin
        .iter()
        .map(|dir| (Binaries::Baseline, dir.clone()))
        .chain([(Binaries::Current, target.clone())])
        .collect();
    let mut stack = Stack::new(&stack_dir, Profile::Single)?;
    let started_at = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default();
    let began = Instant::now();
    eprintln!(
        "bench: about {} min planned ({} s per load phase{})",
        args.planned().as_secs().div_ceil(60),
        args.duration.as_secs(),
        match &args.baseline_bin {
            Some(dir) => format!(
                "; saturated, steady and append with both {}'s binaries and the current ones",
                dir.display()
            ),
            None => String::new(),
        }
    );

    step(&format!(
        "starting the bench stack in {}",
        stack_dir.display()
    ));
    let mut bench = Bench::start(&mut stack, &sets[0].1, Tracing::Off, &orderctl, &args).await?;

    step(&format!(
        "baseline: pgbench, single-row INSERTs, 16 clients, {} s",
        args.pgbench_seconds
    ));
    let tps = bench.pgbench(&pgbench, args.pgbench_seconds).await?;
    eprintln!(
        "  {tps:.0} commits/s; the goal is {tps:.0}/20 = {:.0} orders/s",
        tps / 20.0
    );
    let mut results = Results {
        pgbench: vec![(Profile::Single, tps)],
        ..Results::default()
    };

    let mut first = true;
    for round in 1..=args.rounds() {
        for (binaries, bin_dir) in round_order(&sets, round) {
            if !first {
                step(&table::in_round(
                    &format!("the {binaries} binaries ({})", bin_dir.display()),
                    round,
                    args.rounds(),
                ));
                bench = Bench::start(&mut stack, bin_dir, Tracing::Off, &orderctl, &args).await?;
            }
            first = false;
            if args.runs(Step::Saturated) {
                let mut row = bench.saturated("saturated", *binaries).await?;
                row.round = round;
                results.saturated.push(row);
            }
            if args.runs(Step::Steady) {
                for rate in STEADY_RATES {
                    let mut row = bench.steady(rate, *binaries).await?;
                    row.round = round;
                    results.steady.push(row);
                }
            }
        }
    }
    if args.runs(Step::Spans) {
        step("span export on, to the stack's trace store");
        bench = Bench::start(&mut stack, &target, Tracing::StackStore, &orderctl, &args).await?;
        results.saturated.push(
            bench
                .saturated("saturated, span export on", Binaries::Current)
                .await?,
        );
    }
    drop(bench);
    stack.stop();

    if args.runs(Step::Append) {
        let dir = beside(&stack_dir, "-append");
        for (binaries, bin_dir) in sets.iter().rev() {
            // A fresh stack for each set: what one set appends would otherwise wait in the
            // workers' consumers and be worked off in the next set's runs.
            let mut stack = Stack::new(&dir, Profile::Single)?;
            step(&format!(
                "a fresh stack for the event store alone, {binaries} binaries, in {}",
                dir.display()
            ));
            let bench = Bench::start(&mut stack, bin_dir, Tracing::Off, &orderctl, &args).await?;
            results.appends.extend(bench.appends(*binaries).await?);
            drop(bench);
            stack.stop();
        }
    }

    let mut ha_stopped = None;
    if args.ha {
        // Only one stack runs at a time: the other's processes would share the two cores.
        let dir = beside(&stack_dir, "-ha");
        let mut stack = Stack::new(&dir, Profile::Ha)?;
        step(&format!(
            "starting the HA bench stack (STACK_DB=ha) in {}",
            dir.display()
        ));
        let ha_steps = async {
            let bench = Bench::start(&mut stack, &target, Tracing::Off, &orderctl, &args).await?;
            step(&format!(
                "HA: pgbench through HAProxy, single-row INSERTs, 16 clients, {} s",
                args.pgbench_seconds
            ));
            let ha_tps = bench.pgbench(&pgbench, args.pgbench_seconds).await?;
            eprintln!(
                "  {ha_tps:.0} commits/s (single: {tps:.0}, HA ÷ single = {:.2})",
                ha_tps / tps.max(1.0)
            );
            results.pgbench.push((Profile::Ha, ha_tps));
            if args.runs(Step::Saturated) {
                results
                    .saturated
                    .push(bench.saturated("saturated", Binaries::Current).await?);
            }
            if args.runs(Step::Steady) {
                for rate in STEADY_RATES {
                    results
                        .steady
                        .push(bench.steady(rate, Binaries::Current).await?);
                }
            }
            anyhow::Ok(())
        };
        // A cluster that loses its leader mid-step (Patroni demotes one that cannot reach etcd)
        // still leaves the single node's rows and the HA steps done so far worth printing.
        if let Err(error) = ha_steps.await {
            eprintln!("bench: the HA steps stopped: {error:#}");
            ha_stopped = Some(format!("{error:#}"));
        }
        stack.stop();
    }

    step(&format!(
        "summary ({:.0} s in all, {} s planned)",
        began.elapsed().as_secs_f64(),
        args.planned().as_secs()
    ));
    let text = table::markdown(&started_at, &command_line, &results);
    let text = match ha_stopped {
        Some(error) => format!("{text}\nThe HA steps stopped early: {error}\n"),
        None => text,
    };
    std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())?;
    if args.write {
        let path = root.join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
        std::fs::write(&path, table::add_run(&old, &text))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs `command` to its end off the async threads.
async fn output_of(mut command: Command) -> anyhow::Result<std::process::Output> {
    Ok(tokio::task::spawn_blocking(move || command.output()).await??)
}

/// What a phase needs of a started bench stack.
struct Bench {
    /// The `postgres` database (statistics, pgbench's scratch database), eventstoredb and
    /// ordersdb: one connection each, made once, so the polls of a phase fork no backends.
    postgres: PgPool,
    events: PgPool,
    orders: PgPool,
    database_urls: String,
    pg_port: u16,
    nats_http_port: u16,
    eventstore_port: u16,
    /// The stack's certificates, when it runs mTLS.
    tls_dir: PathBuf,
    pid_dir: PathBuf,
    /// The HA cluster's layout (where each node's postmaster.pid is); `None` for one PostgreSQL.
    ha: Option<testkit::patroni::HaLayout>,
    work_dir: PathBuf,
    orderctl: PathBuf,
    client_env: Vec<(String, String)>,
    duration: Duration,
}

impl Bench {
    /// (Re)starts the stack with the binaries of `bin_dir` and connects to it.
    async fn start(
        stack: &mut Stack,
        bin_dir: &Path,
        tracing: Tracing,
        orderctl: &Path,
        args: &Args,
    ) -> anyhow::Result<Bench> {
        stack.restart(bin_dir, tracing)?;
        let connect = |database: &str| {
            let url = stack.database_url(database);
            async move {
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .with_context(|| format!("connecting to the bench stack's {url}"))
            }
        };
        Ok(Bench {
            postgres: connect("postgres").await?,
            events: connect("eventstoredb").await?,
            orders: connect("ordersdb").await?,
            database_urls: stack.database_url(""),
            pg_port: stack.pg_port(),
            nats_http_port: stack.nats_http_port(),
            eventstore_port: stack.eventstore_port(),
            tls_dir: stack.tls_dir(),
            pid_dir: stack.pid_dir(),
            ha: stack.ha_layout()?,
            work_dir: stack.work_dir(),
            client_env: stack.client_env()?,
            orderctl: orderctl.to_owned(),
            duration: args.duration,
        })
    }

    fn profile(&self) -> Profile {
        match self.ha {
            Some(_) => Profile::Ha,
            None => Profile::Single,
        }
    }

    fn database_url(&self, database: &str) -> String {
        self.database_urls
            .replacen("/?", &format!("/{database}?"), 1)
    }

    /// Puts every step on the same footing: the set of binaries measured second would otherwise
    /// find the tables the first one filled, with its dead rows (the outbox's, the read model's
    /// old versions) and, until autovacuum comes by, without statistics; whichever set ran second
    /// carried 12–17 % fewer orders/s (BENCHMARKS, 2026-12-07 16:41 UTC). Every database is
    /// vacuumed and analyzed and the server checkpointed, before the step's clock starts.
    async fn level(&self) -> anyhow::Result<()> {
        for database in ["eventstoredb", "paymentsdb", "ordersdb"] {
            let url = self.database_url(database);
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            sqlx::query("VACUUM (ANALYZE)")
                .execute(&pool)
                .await
                .with_context(|| format!("VACUUM of {database}"))?;
            pool.close().await;
        }
        sqlx::query("CHECKPOINT")
            .execute(&self.postgres)
            .await
            .context("CHECKPOINT")?;
        Ok(())
    }

    async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
    }

    async fn pgbench(&self, pgbench: &Path, seconds: u32) -> anyhow::Result<f64> {
        sqlx::query("DROP DATABASE IF EXISTS bench_scratch")
            .execute(&self.postgres)
            .await?;
        sqlx::query("CREATE DATABASE bench_scratch")
            .execute(&self.postgres)
            .await?;
        let scratch = PgPool::connect(&self.database_url("bench_scratch")).await?;
        sqlx::query(
            "CREATE TABLE scratch (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             payload TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&scratch)
        .await?;
        scratch.close().await;
        let script = self.work_dir.join("insert.sql");
        std::fs::write(
            &script,
            "INSERT INTO scratch (payload) VALUES (repeat('x', 500));\n",
        )?;
        let mut command = Command::new(pgbench);
        command
            .args(["-h", "127.0.0.1", "-p", &self.pg_port.to_string()])
            .args(["-U", "root", "-n", "-c", "16", "-j", "2"])
            .args(["-T", &seconds.to_string(), "-f"])
            .arg(&script)
            .arg("bench_scratch");
        let output = output_of(command).await?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|line| line.strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|tps| tps.parse::<f64>().ok())
            .with_context(|| {
                format!(
                    "pgbench gave no tps: {}{}",
                    text,
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        snapshot(&self.pid_dir, self.ha.as_ref(), &self.postgres).await
    }

    /// `orderctl load` with `extra` arguments; its JSON report.
    async fn load(&self, extra: &[String]) -> anyhow::Result<LoadReport> {
        let mut command = Command::new(&self.orderctl);
        command
            .envs(
                self.client_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .args(["load", "--customers", "1000", "--json"])
            .args(extra)
            .stderr(std::process::Stdio::inherit());
        let output = output_of(command).await.context("running orderctl load")?;
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "orderctl load gave no report ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    async fn saturated(&self, name: &str, binaries: Binaries) -> anyhow::Result<Saturated> {
        step(&format!(
            "{name} ({} PostgreSQL, {binaries} binaries): orderctl load --rate max, 32 connections, {} s, then until every order is final",
            self.profile(),
            self.duration.as_secs()
        ));
        self.level().await?;
        let before = self.snapshot().await?;
        let created_before = self.created().await?;
        let finals_before = self.finals().await?;
        let started = Instant::now();
        let report = self
            .load(&[
                "--rate".into(),
                "max".into(),
                "--concurrency".into(),
                "32".into(),
                "--duration".into(),
                order_domain::format_duration(self.duration),
                "--settle".into(),
                "1s".into(),
            ])
            .await?;
        let (seconds, finals) = self
            .wait_final(started, created_before, finals_before)
            .await?;
        self.drain().await?;
        let cpu_after = self.snapshot().await?;
        tokio::time::sleep(STATS_FLUSH_WAIT).await;
        let after = self.snapshot().await?;

        let (cpu_ms_per_order, switches_per_order) = per_order(&before, &cpu_after, finals);
        let wall = cpu_after.at.duration_since(before.at).as_secs_f64();
        let row = Saturated {
            profile: self.profile(),
            binaries,
            round: 1,
            name: name.to_owned(),
            accepted: report.accepted,
            refused: report.errors.values().sum(),
            posts_per_s: report.post.per_second,
            finals,
            seconds,
            cpu_ms_per_order,
            switches_per_order,
            commits: difference(&before.commits, &after.commits).values().sum(),
            rollbacks: difference(&before.rollbacks, &after.rollbacks)
                .values()
                .sum(),
            busy_pct: if wall > 0.0 {
                (cpu_after.machine - before.machine) / wall * 100.0
            } else {
                0.0
            },
        };
        eprintln!("  {}", row.summary());
        Ok(row)
    }

    async fn steady(&self, rate: f64, binaries: Binaries) -> anyhow::Result<Steady> {
        step(&format!(
            "steady {rate}/s ({} PostgreSQL, {binaries} binaries) for {} s (POST → final by read-model notices)",
            self.profile(),
            self.duration.as_secs()
        ));
        self.level().await?;
        let before = self.snapshot().await?;
        let report = self
            .load(&[
                "--rate".into(),
                rate.to_string(),
                "--concurrency".into(),
                "64".into(),
                "--duration".into(),
                order_domain::format_duration(self.duration),
                "--settle".into(),
                "30s".into(),
            ])
            .await?;
        self.drain().await?;
        let after = self.snapshot().await?;
        let (cpu_ms_per_order, switches_per_order) = per_order(&before, &after, report.accepted);
        let latency = report.post_to_final.latency;
        let row = Steady {
            profile: self.profile(),
            binaries,
            round: 1,
            rate,
            accepted: report.accepted,
            errors: report.errors.values().sum(),
            not_final: report.not_final,
            followed_by: report.followed_by,
            cpu_ms_per_order,
            switches_per_order,
            p50_ms: latency.p50_ms,
            p95_ms: latency.p95_ms,
            p99_ms: latency.p99_ms,
            max_ms: latency.max_ms,
        };
        eprintln!("  {}", row.summary());
        Ok(row)
    }

    async fn created(&self) -> anyhow::Result<i64> {
        Bench::count(
            &self.events,
            "SELECT count(*) FROM events WHERE event_type = 'created'",
        )
        .await
    }

    async fn finals(&self) -> anyhow::Result<i64> {
        Bench::count(
            &self.orders,
            &format!(
                "SELECT count(*) FROM orders WHERE status IN ({})",
                final_statuses()
            ),
        )
        .await
    }

    /// Until every order created since `created_before` is final (or nothing changed for a
    /// minute): seconds from `started` to the last one seen final, and how many became final.
    async fn wait_final(
        &self,
        started: Instant,
        created_before: i64,
        finals_before: i64,
    ) -> anyhow::Result<(f64, u64)> {
        let created = u64::try_from(self.created().await? - created_before).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(600);
        let (mut last_change, mut last_finals) = (Instant::now(), None);
        loop {
            let finals = u64::try_from(self.finals().await? - finals_before).unwrap_or(0);
            let now = Instant::now();
            if last_finals != Some(finals) {
                (last_change, last_finals) = (now, Some(finals));
            }
            if finals >= created {
                return Ok((now.duration_since(started).as_secs_f64(), finals));
            }
            if now > deadline || now.duration_since(last_change) > Duration::from_secs(60) {
                eprintln!("  not every order became final: {finals} of {created}");
                return Ok((now.duration_since(started).as_secs_f64(), finals));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits (60 s at most) until JetStream has delivered, and had acked, every message of every
    /// consumer, and the event store's outbox is empty: the work of a phase is done. A phase that
    /// does not drain is an error that says what was still pending.
    async fn drain(&self) -> anyhow::Result<()> {
        // From the monitoring port: it costs the pipeline nothing, and covers every consumer.
        let url = format!(
            "http://127.0.0.1:{}/jsz?consumers=true",
            self.nats_http_port
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()?;
        testkit::drain::until_drained(
            Duration::from_secs(60),
            Duration::from_millis(500),
            async || {
                let jsz: Jsz = http.get(&url).send().await?.json().await?;
                let mut pending = Vec::new();
                let unfinished = jsz.unfinished();
                if unfinished > 0 {
                    pending.push(format!(
                        "{unfinished} messages not yet delivered or acknowledged by the consumers"
                    ));
                }
                pending.extend(testkit::drain::outbox(&self.events).await?);
                Ok(pending)
            },
        )
        .await
        .into_result()
        .context("the pipeline did not drain after the load")?;
        Ok(())
    }
}

/// The part of `orderctl load --json` the bench reads.
#[derive(Debug, Deserialize)]
struct LoadReport {
    accepted: u64,
    errors: std::collections::BTreeMap<String, u64>,
    not_final: u64,
    followed_by: String,
    post: Phase,
    post_to_final: Phase,
}

#[derive(Debug, Deserialize)]
struct Phase {
    per_second: f64,
    latency: Latency,
}

#[derive(Debug, Deserialize)]
struct Latency {
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

/// nats-server's `/jsz?consumers=true`, as far as pending and unacked messages go.
#[derive(Debug, Deserialize)]
struct Jsz {
    #[serde(default)]
    account_details: Vec<Account>,
}

#[derive(Debug, Deserialize)]
struct Account {
    #[serde(default)]
    stream_detail: Vec<StreamDetail>,
}

#[derive(Debug, Deserialize)]
struct StreamDetail {
    #[serde(default)]
    consumer_detail: Option<Vec<ConsumerDetail>>,
}

#[derive(Debug, Deserialize)]
struct ConsumerDetail {
    #[serde(default)]
    num_pending: u64,
    #[serde(default)]
    num_ack_pending: u64,
}

impl Jsz {
    fn unfinished(&self) -> u64 {
        self.account_details
            .iter()
            .flat_map(|account| &account.stream_detail)
            .flat_map(|stream| stream.consumer_detail.iter().flatten())
            .map(|consumer| consumer.num_pending + consumer.num_ack_pending)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use clap::Parser as _;

    use super::{Args, Binaries, Step, round_order};

    #[test]
    fn rounds_alternate_which_set_goes_first() {
        let sets = vec![
            (Binaries::Baseline, PathBuf::from("/base")),
            (Binaries::Current, PathBuf::from("/current")),
        ];
        let firsts: Vec<Binaries> = (1..=4)
            .map(|round| round_order(&sets, round)[0].0)
            .collect();
        assert_eq!(
            firsts,
            [
                Binaries::Baseline,
                Binaries::Current,
                Binaries::Baseline,
                Binaries::Current
            ]
        );
        // Expected: one set alone goes first in every round.
        let alone = &sets[1..];
        assert_eq!(round_order(alone, 2)[0].0, Binaries::Current);
    }

    /// `devstack bench`'s arguments on their own.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn every_step_runs_unless_only_names_some() {
        let args = parse(&[]).expect("no arguments");
        assert_eq!(args.only, Step::ALL);
        assert_eq!(args.duration, Duration::from_secs(20));
        assert!(args.baseline_bin.is_none());
        let args = parse(&["--only", "append,steady", "--duration", "10s"]).expect("two steps");
        assert!(args.runs(Step::Append) && args.runs(Step::Steady));
        assert!(!args.runs(Step::Saturated) && !args.runs(Step::Spans));
        assert_eq!(args.duration, Duration::from_secs(10));
    }

    #[test]
    fn an_unknown_step_or_duration_is_refused_by_name() {
        let error = parse(&["--only", "appends"]).expect_err("no such step");
        assert!(error.to_string().contains("appends"), "{error}");
        let error = parse(&["--duration", "ten"]).expect_err("no duration");
        assert!(error.to_string().contains("--duration"), "{error}");
    }

    #[test]
    fn the_planned_duration_counts_each_step_once_per_set_of_binaries() {
        let alone = parse(&["--duration", "10s", "--only", "append"]).expect("append");
        // A stack, pgbench (15 s), then a fresh stack (15 s), a warm-up (1 s) and the statistics'
        // wait (11 s), and three runs of 10 s, each with that wait and 1 s for the outbox.
        assert_eq!(
            alone.planned(),
            Duration::from_secs(10 + 15 + 15 + 12 + 3 * 22)
        );
        let twice = parse(&[
            "--duration",
            "10s",
            "--only",
            "append",
            "--baseline-bin",
            "/tmp/base-bin",
        ])
        .expect("append twice");
        assert_eq!(
            twice.planned(),
            Duration::from_secs(10 + 15 + 2 * (15 + 12 + 3 * 22))
        );
        let pipeline =
            parse(&["--duration", "10s", "--only", "saturated,steady"]).expect("pipeline");
        // Saturated: 10 s + 5 s to settle + 11 s; steady: two rates of 10 s + 5 s.
        assert_eq!(pipeline.planned(), Duration::from_secs(10 + 15 + 26 + 30));
        let with_baseline = [
            "--duration",
            "10s",
            "--only",
            "saturated,steady",
            "--baseline-bin",
            "/tmp/base-bin",
        ];
        let compared = parse(&with_baseline).expect("pipeline twice");
        // The same steps again after one restart with the other binaries.
        assert_eq!(
            compared.planned(),
            pipeline.planned() + Duration::from_secs(10 + 26 + 30)
        );
        let rounds =
            parse(&[&with_baseline[..], &["--rounds", "3"]].concat()).expect("three rounds");
        // Six sets measured: five restarts after the first.
        assert_eq!(
            rounds.planned(),
            pipeline.planned() + Duration::from_secs(5 * (10 + 26 + 30))
        );
        // Expected: rounds without a baseline are one; none at all is refused.
        let alone = parse(&["--only", "saturated", "--rounds", "3"]).expect("rounds alone");
        assert_eq!(alone.rounds(), 1);
        assert!(parse(&["--rounds", "0"]).is_err());
    }

    #[test]
    fn the_final_statuses_are_the_domains() {
        assert_eq!(
            super::final_statuses(),
            "'Approved','PaymentFailed','Rejected','Cancelled'"
        );
    }
}
