//! The chaos run: the whole pipeline as real processes under a steady load of orders while every
//! process — the six services, nats-server and PostgreSQL — is killed and restarted, alone and
//! together, and a worker is frozen for longer than its consumer's ack wait. When the load stops
//! and the pipeline has drained, the invariants are checked against the databases and the stream.
//!
//! [`run`] is the one entry point, shared by the `chaos` binary (`scripts/chaos`) and the CI-size
//! runs in `tests/run.rs`; its [`Report`] prints the figures and says which invariants hold. The
//! processes are started by the end-to-end tests' [`e2e_tests::Pipeline`].

mod faults;
mod invariants;
mod load;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use order_domain::{Deadlines, format_duration};
use tokio::time::Instant;

use e2e_tests::{Options, Pipeline};

pub use faults::{Component, FaultRecord, Outage, Schedule};
pub use invariants::Invariant;
pub use load::{CancelStats, LoadStats};
pub use report::Report;

/// Every wallet's starting balance, given to paymentworker so that the checks know it.
pub const INITIAL_CREDIT: &str = "1000.00";
/// The review limit, given to reviewworker so that the checks know it.
pub const REVIEW_MAX_AMOUNT: &str = "500.00";

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long orders are offered; the fault schedule is fitted into it (the load goes on until
    /// the last fault has recovered when the schedule takes longer).
    pub duration: Duration,
    /// Orders offered per second.
    pub rate: f64,
    /// Seeds the orders, the cancels and the fault schedule's choices (which worker, how long down).
    pub seed: u64,
    /// Customers the orders are spread over, each with a wallet of [`INITIAL_CREDIT`]; `None`:
    /// one per 15 orders expected, at least 50, so that wallets run dry late in the run rather
    /// than early.
    pub customers: Option<u32>,
    /// Which list of faults.
    pub schedule: Schedule,
    /// Multiplies every time a process stays down (1.5 to 5 s with 1.0): 4.0 keeps them down
    /// for up to 20 s, longer than a worker's retries of one message last.
    pub down_scale: f64,
    /// How long a worker stays frozen (SIGSTOP); longer than the consumers' ack wait (30 s).
    pub pause: Duration,
    /// How long a client retries one request (transport errors, 5xx, 429) before giving up.
    pub request_deadline: Duration,
    /// After the load, how long to wait for every order to be final and the pipeline idle.
    pub drain_timeout: Duration,
    /// How long a restarted process may take to be ready again.
    pub ready_timeout: Duration,
    /// Where to copy every process's log at the end of the run (see [`Config::keep_logs_always`]).
    pub logs_dir: Option<PathBuf>,
    /// Copy the logs also when every invariant holds (otherwise only when one fails).
    pub keep_logs_always: bool,
    /// The saga deadlines deadlinewatcher works with (`PAYMENT_DEADLINE`, `REVIEW_DEADLINE`);
    /// `None`: its defaults (30 s and 60 s).
    pub deadlines: Option<Deadlines>,
}

impl Config {
    /// The full schedule for `duration` at `rate` orders per second.
    pub fn new(duration: Duration, rate: f64, seed: u64) -> Config {
        Config {
            duration,
            rate,
            seed,
            customers: None,
            schedule: Schedule::Full,
            down_scale: 1.0,
            pause: Duration::from_secs(35),
            request_deadline: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(120),
            ready_timeout: Duration::from_secs(60),
            logs_dir: None,
            keep_logs_always: false,
            deadlines: None,
        }
    }

    /// A run sized for CI: the short schedule (one kill of every process and one SIGSTOP) at 5
    /// orders per second, about a minute and a half of load. The waits are shorter too, so that
    /// even a failing run reports within the test runner's five minutes.
    pub fn ci(seed: u64) -> Config {
        Config {
            schedule: Schedule::Short,
            pause: Duration::from_secs(33),
            drain_timeout: Duration::from_secs(90),
            ready_timeout: Duration::from_secs(30),
            ..Config::new(Duration::from_secs(70), 5.0, seed)
        }
    }

    /// The deadline schedule at CI size: deadlines of 3 s, each one made to fall (workers frozen,
    /// the watcher and the event store down) under 5 orders per second, about 45 s of load.
    pub fn deadlines_ci(seed: u64) -> Config {
        Config {
            schedule: Schedule::Deadlines,
            deadlines: Some(SHORT_DEADLINES),
            drain_timeout: Duration::from_secs(90),
            ready_timeout: Duration::from_secs(30),
            ..Config::new(Duration::from_secs(45), 5.0, seed)
        }
    }

    /// The deadlines the checks hold the watcher to.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines.unwrap_or(Deadlines::DEFAULT)
    }
}

/// The deadlines of the deadline schedule: 3 s to pay, 3 s to review.
pub const SHORT_DEADLINES: Deadlines = Deadlines {
    payment: Duration::from_secs(3),
    review: Duration::from_secs(3),
};

/// Runs the scenario: starts the pipeline, offers orders while the fault schedule runs, waits for
/// the pipeline to drain and checks every invariant. An `Err` means the run itself could not be
/// done (the pipeline did not start, a database could not be read afterwards); an invariant that
/// fails is in the [`Report`] ([`Report::passed`]).
///
/// Needs tokio's multi-threaded runtime: starting and stopping servers blocks, which is done with
/// `block_in_place` so that the load keeps its pace meanwhile.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    if tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::MultiThread
    {
        bail!(
            "the chaos run needs tokio's multi-threaded runtime (#[tokio::test(flavor = \"multi_thread\")])"
        );
    }
    if !(config.rate.is_finite() && config.rate > 0.0) {
        bail!("the rate must be a positive number of orders per second");
    }
    if !(config.down_scale.is_finite() && config.down_scale > 0.0 && config.down_scale <= 100.0) {
        bail!("the down scale must be a number above 0 and at most 100");
    }
    let began = Instant::now();
    let mut env: Vec<(String, String)> = [
        ("PAYMENT_INITIAL_CREDIT", INITIAL_CREDIT),
        ("REVIEW_MAX_AMOUNT", REVIEW_MAX_AMOUNT),
        ("RUST_LOG", "info"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    // The watcher's own defaults unless the schedule has short deadlines (the e2e Pipeline's are
    // longer than any fault: the chaos run wants the production values).
    let deadlines = config.deadlines();
    env.extend([
        (
            "PAYMENT_DEADLINE".to_owned(),
            format_duration(deadlines.payment),
        ),
        (
            "REVIEW_DEADLINE".to_owned(),
            format_duration(deadlines.review),
        ),
    ]);
    if config.deadlines.is_some() {
        env.push(("DEADLINE_SCAN_INTERVAL".to_owned(), "250ms".to_owned()));
    }
    // The database schedule runs the pipeline on three PostgreSQL nodes under Patroni.
    let pg_cluster = if config.schedule == Schedule::Db {
        let cluster = tokio::task::spawn_blocking(testkit::patroni::PgCluster::start)
            .await
            .context("starting the Patroni cluster")?
            .context("starting the Patroni cluster")?;
        Some(cluster)
    } else {
        None
    };
    let mut pipeline = Pipeline::start_with(Options {
        env,
        pg_cluster,
        ..Options::default()
    })
    .await
    .context("starting the pipeline")?;
    let startup = began.elapsed();
    tracing::info!(
        seconds = startup.as_secs_f64(),
        logs = %pipeline.log_dir().display(),
        "chaos: pipeline started"
    );

    let plan = faults::plan(&config);
    let customers = config.customers.unwrap_or_else(|| {
        let expected = config.rate * config.duration.as_secs_f64();
        ((expected / 15.0).ceil() as u32).max(50)
    });
    let load_config = load::LoadConfig {
        base_url: pipeline.base_url(),
        token: Some(pipeline.operator_token()),
        rate: config.rate,
        customers,
        seed: config.seed,
        deadline: config.request_deadline,
        cancel_share: 0.10,
    };
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load_started = Instant::now();
    let load = tokio::spawn(load::run(load_config, stop_load.clone()));

    let faults = faults::execute(&mut pipeline, &plan, load_started, &config).await;
    tokio::time::sleep_until(load_started + config.duration).await;
    stop_load.cancel();
    let load = load
        .await
        .context("the load generator panicked")?
        .context("the load generator")?;
    let load_time = load_started.elapsed();
    tracing::info!(
        offered = load.offered,
        accepted = load.accepted,
        "chaos: load stopped; draining"
    );

    let drain = invariants::drain(&pipeline, &load, config.drain_timeout).await;
    tracing::info!(
        seconds = drain.seconds,
        complete = drain.complete,
        "chaos: drained; checking"
    );
    let checking = Instant::now();
    let checked = match invariants::check(&pipeline, &load, &faults, &drain, &deadlines).await {
        Ok(checked) => checked,
        Err(error) => {
            return Err(match &config.logs_dir {
                Some(dir) if copy_logs(&pipeline, dir).is_ok() => error.context(format!(
                    "checking the invariants (logs in {})",
                    dir.display()
                )),
                _ => error.context("checking the invariants"),
            });
        }
    };
    let check_time = checking.elapsed();

    let mut report = Report {
        seed: config.seed,
        rate: config.rate,
        customers,
        schedule: config.schedule,
        down_scale: config.down_scale,
        planned_seconds: config.duration.as_secs_f64(),
        startup_seconds: startup.as_secs_f64(),
        load_seconds: load_time.as_secs_f64(),
        drain_seconds: drain.seconds,
        drain_complete: drain.complete,
        check_seconds: check_time.as_secs_f64(),
        load,
        orders: checked.orders,
        events: checked.events,
        finals: checked.finals,
        refunded: checked.refunded,
        deadline_cancels: checked.deadline_cancels,
        payments: checked.payments,
        faults: faults.records,
        invariants: checked.invariants,
        logs: None,
    };
    if let Some(dir) = &config.logs_dir
        && (config.keep_logs_always || !report.passed())
    {
        match copy_logs(&pipeline, dir) {
            Ok(()) => report.logs = Some(dir.clone()),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "could not keep the logs"),
        }
    }
    Ok(report)
}

/// Copies the services' logs, nats-server's and PostgreSQL's into `dir`.
fn copy_logs(pipeline: &Pipeline, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for entry in std::fs::read_dir(pipeline.log_dir()).context("reading the log folder")? {
        let path = entry.context("reading the log folder")?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            files.push((path.clone(), name.to_owned()));
        }
    }
    files.push((
        pipeline.nats.dir().join("nats.log"),
        "nats-server.log".into(),
    ));
    files.push((
        pipeline.postgres.dir().join("postgres.log"),
        "postgres.log".into(),
    ));
    if let Some(cluster) = &pipeline.pg_cluster {
        std::fs::write(dir.join("patroni-cluster.log"), cluster.logs())
            .context("writing the Patroni cluster's logs")?;
    }
    for (from, name) in files {
        if from.is_file() {
            std::fs::copy(&from, dir.join(&name))
                .with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}
