//! The fault schedule: which process is killed (or frozen) when, for how long, and how long it took
//! to be ready again.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use tokio::time::Instant;

use super::Config;
use e2e_tests::Pipeline;

/// Something the schedule can kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Eventstore,
    Ordersvc,
    Paymentworker,
    Reviewworker,
    Querymodelworker,
    Deadlinewatcher,
    #[serde(rename = "nats-server")]
    NatsServer,
    #[serde(rename = "postgresql")]
    Postgres,
    /// The Patroni cluster's leader node: its Patroni and its PostgreSQL together.
    #[serde(rename = "db-leader")]
    DbLeader,
    /// The cluster's synchronous standby (Patroni and PostgreSQL).
    #[serde(rename = "db-sync-standby")]
    DbSyncStandby,
    /// The leader's PostgreSQL alone; its Patroni lives on and starts it again.
    #[serde(rename = "db-leader-postgres")]
    DbLeaderPostgres,
    /// One etcd member of the three.
    #[serde(rename = "etcd")]
    Etcd,
}

impl Component {
    const WORKERS: [Component; 3] = [
        Component::Paymentworker,
        Component::Reviewworker,
        Component::Querymodelworker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Eventstore => "eventstore",
            Component::Ordersvc => "ordersvc",
            Component::Paymentworker => "paymentworker",
            Component::Reviewworker => "reviewworker",
            Component::Querymodelworker => "querymodelworker",
            Component::Deadlinewatcher => "deadlinewatcher",
            Component::NatsServer => "nats-server",
            Component::Postgres => "postgresql",
            Component::DbLeader => "db-leader",
            Component::DbSyncStandby => "db-sync-standby",
            Component::DbLeaderPostgres => "db-leader-postgres",
            Component::Etcd => "etcd",
        }
    }

    /// A part of the Patroni cluster (`--schedule db`).
    fn is_database_cluster(self) -> bool {
        matches!(
            self,
            Component::DbLeader
                | Component::DbSyncStandby
                | Component::DbLeaderPostgres
                | Component::Etcd
        )
    }

    /// The service's name in [`Pipeline`], for the six binaries of the workspace.
    fn service(self) -> Option<&'static str> {
        match self {
            Component::NatsServer | Component::Postgres => None,
            cluster if cluster.is_database_cluster() => None,
            other => Some(other.name()),
        }
    }

    fn is_worker(self) -> bool {
        Component::WORKERS.contains(&self)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which list of faults a run goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Every process killed alone, then overlapping faults, and a worker frozen past its ack
    /// wait; repeated when the duration leaves room.
    Full,
    /// A worker frozen past its ack wait, then every process killed once.
    Short,
    /// Short saga deadlines ([`super::Config::deadlines`]) with the faults that make them fall:
    /// paymentworker, reviewworker and querymodelworker frozen past them, the watcher and the event
    /// store killed while they fall, then every process killed once.
    Deadlines,
    /// The pipeline on three PostgreSQL nodes under Patroni: the leader's node killed, the
    /// synchronous standby killed, an etcd member killed, the leader's PostgreSQL alone killed,
    /// a planned switchover; repeated while the duration leaves room.
    Db,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// SIGKILL (PostgreSQL: an immediate shutdown, which recovers from its WAL on start).
    Kill(Component),
    /// Started again, same port and data.
    Start(Component),
    /// SIGSTOP.
    Freeze(Component),
    /// SIGCONT.
    Thaw(Component),
    /// A planned switchover of the Patroni cluster to its synchronous standby.
    Switchover,
    Wait(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct Fault {
    name: String,
    steps: Vec<Step>,
    /// Offset from the start of the load at which it is planned.
    at: Duration,
}

impl Fault {
    fn new(name: String, steps: Vec<Step>) -> Fault {
        Fault {
            name,
            steps,
            at: Duration::ZERO,
        }
    }

    /// The time the fault is expected to take: its waits and about two seconds per restart.
    fn nominal(&self) -> Duration {
        self.steps
            .iter()
            .map(|step| match step {
                Step::Wait(wait) => *wait,
                // A node rejoins in seconds.
                Step::Start(c) if c.is_database_cluster() => Duration::from_secs(5),
                Step::Switchover => Duration::from_secs(5),
                Step::Start(_) => Duration::from_secs(2),
                _ => Duration::ZERO,
            })
            .sum()
    }
}

/// A time to stay down, from the seeded generator, times the run's `down_scale`.
fn down(rng: &mut StdRng, config: &Config, low_ms: u64, high_ms: u64) -> Duration {
    Duration::from_millis(rng.random_range(low_ms..=high_ms)).mul_f64(config.down_scale)
}

fn worker(rng: &mut StdRng) -> Component {
    Component::WORKERS[rng.random_range(0..Component::WORKERS.len())]
}

fn kill(component: Component, down: Duration) -> Fault {
    let how = match component {
        Component::Postgres => "crash (immediate shutdown)",
        Component::DbLeader | Component::DbSyncStandby => "SIGKILL Patroni and PostgreSQL of",
        _ => "SIGKILL",
    };
    Fault::new(
        format!(
            "{how} {component}, restart after {:.1} s",
            down.as_secs_f64()
        ),
        vec![
            Step::Kill(component),
            Step::Wait(down),
            Step::Start(component),
        ],
    )
}

fn freeze(component: Component, pause: Duration) -> Fault {
    let past = if pause > Duration::from_secs(30) {
        "past the 30 s ack wait"
    } else {
        "past the deadlines"
    };
    Fault::new(
        format!(
            "SIGSTOP {component} for {:.0} s ({past}), then SIGCONT",
            pause.as_secs_f64()
        ),
        vec![
            Step::Freeze(component),
            Step::Wait(pause),
            Step::Thaw(component),
        ],
    )
}

const SINGLES: [Component; 8] = [
    Component::Eventstore,
    Component::Paymentworker,
    Component::Reviewworker,
    Component::Querymodelworker,
    Component::Deadlinewatcher,
    Component::Ordersvc,
    Component::NatsServer,
    Component::Postgres,
];

/// One pass of the full list.
fn full_round(rng: &mut StdRng, config: &Config) -> Vec<Fault> {
    use Component::*;
    let mut faults: Vec<Fault> = SINGLES
        .iter()
        .map(|component| kill(*component, down(rng, config, 1500, 4000)))
        .collect();
    faults.push(freeze(worker(rng), config.pause));
    let d = down(rng, config, 2000, 5000);
    faults.push(Fault::new(
        format!(
            "SIGKILL eventstore and paymentworker together, restart after {:.1} s",
            d.as_secs_f64()
        ),
        vec![
            Step::Kill(Eventstore),
            Step::Kill(Paymentworker),
            Step::Wait(d),
            Step::Start(Eventstore),
            Step::Start(Paymentworker),
        ],
    ));
    let (w, d) = (worker(rng), down(rng, config, 2000, 4000));
    faults.push(Fault::new(
        format!("nats-server down while {w} is killed and restarted without it"),
        vec![
            Step::Kill(NatsServer),
            Step::Wait(Duration::from_secs(1)),
            Step::Kill(w),
            Step::Wait(d),
            Step::Start(w),
            Step::Wait(Duration::from_secs(2)),
            Step::Start(NatsServer),
        ],
    ));
    let d = down(rng, config, 2000, 5000);
    faults.push(Fault::new(
        "PostgreSQL crash while eventstore restarts".to_owned(),
        vec![
            Step::Kill(Eventstore),
            Step::Kill(Postgres),
            Step::Start(Eventstore),
            Step::Wait(d),
            Step::Start(Postgres),
        ],
    ));
    faults
}

fn short_round(rng: &mut StdRng, config: &Config) -> Vec<Fault> {
    let mut faults = vec![freeze(worker(rng), config.pause)];
    faults.extend(
        SINGLES
            .iter()
            .map(|component| kill(*component, down(rng, config, 1000, 2000))),
    );
    faults
}

/// Each step's deadline falling while what should meet it is away: the workers frozen (and so the
/// read model behind), the watcher and the event store down, each for `pause` (which outlasts the
/// deadlines); then paymentworker killed mid-flight. The other kills are the short schedule's.
fn deadline_round(rng: &mut StdRng, config: &Config, pause: Duration) -> Vec<Fault> {
    use Component::*;
    vec![
        freeze(Paymentworker, pause),
        freeze(Reviewworker, pause),
        freeze(Querymodelworker, pause),
        kill(Deadlinewatcher, pause),
        kill(Eventstore, pause),
        kill(Paymentworker, down(rng, config, 1000, 2000)),
    ]
}

/// The database faults of `--schedule db`, each alone: the leader's node, the synchronous
/// standby, an etcd member and the leader's PostgreSQL alone killed, and a planned switchover.
fn db_round(rng: &mut StdRng, config: &Config) -> Vec<Fault> {
    use Component::*;
    let mut faults = vec![
        // Down past Patroni's ttl (20 s), so that another node is elected; a leader back sooner
        // finds its own key and simply leads on.
        kill(DbLeader, down(rng, config, 25_000, 30_000)),
        kill(DbSyncStandby, down(rng, config, 3000, 8000)),
        kill(Etcd, down(rng, config, 3000, 8000)),
        Fault::new(
            "SIGKILL the leader's PostgreSQL alone (its Patroni starts it again)".to_owned(),
            vec![Step::Kill(DbLeaderPostgres), Step::Start(DbLeaderPostgres)],
        ),
        Fault::new(
            "planned switchover to the synchronous standby".to_owned(),
            vec![Step::Switchover],
        ),
    ];
    // A different order each round, so a fault also meets the aftermath of each other one.
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.random_range(0..=i));
    }
    faults
}

/// The faults of a run, each with its planned start, spread over `config.duration`: a warm-up,
/// then each fault followed by an equal share of the remaining time to recover (at least a few
/// seconds). The full schedule is repeated as long as each pass leaves about eight seconds of
/// recovery per fault.
pub(crate) fn plan(config: &Config) -> Vec<Fault> {
    // A separate stream from the load's, so the orders do not depend on the schedule.
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed_fa17);
    let (warmup, min_recovery) = match config.schedule {
        Schedule::Full => (Duration::from_secs(5), Duration::from_secs(6)),
        Schedule::Short | Schedule::Deadlines => (Duration::from_secs(3), Duration::from_secs(4)),
        Schedule::Db => (Duration::from_secs(5), Duration::from_secs(8)),
    };
    let mut faults = match config.schedule {
        Schedule::Short => short_round(&mut rng, config),
        Schedule::Deadlines => {
            // Each fault outlasts the longer deadline by two seconds and a few sweeps.
            let longest = config
                .deadlines
                .map_or(Duration::from_secs(60), |d| d.payment.max(d.review));
            deadline_round(&mut rng, config, longest + Duration::from_secs(2))
        }
        Schedule::Db => {
            let first = db_round(&mut rng, config);
            let pass: Duration = first.iter().map(Fault::nominal).sum::<Duration>()
                + Duration::from_secs(10) * u32::try_from(first.len()).unwrap_or(u32::MAX);
            let room = config.duration.saturating_sub(warmup);
            let rounds = (room.as_secs_f64() / pass.as_secs_f64()).floor().max(1.0) as usize;
            let mut faults = first;
            for _ in 1..rounds {
                faults.extend(db_round(&mut rng, config));
            }
            faults
        }
        Schedule::Full => {
            let first = full_round(&mut rng, config);
            let pass: Duration = first.iter().map(Fault::nominal).sum::<Duration>()
                + Duration::from_secs(8) * u32::try_from(first.len()).unwrap_or(u32::MAX);
            let room = config.duration.saturating_sub(warmup);
            let rounds = (room.as_secs_f64() / pass.as_secs_f64()).floor().max(1.0) as usize;
            let mut faults = first;
            for _ in 1..rounds {
                faults.extend(full_round(&mut rng, config));
            }
            faults
        }
    };
    let busy: Duration = faults.iter().map(Fault::nominal).sum();
    let count = u32::try_from(faults.len()).unwrap_or(u32::MAX).max(1);
    let recovery =
        (config.duration.saturating_sub(warmup).saturating_sub(busy) / count).max(min_recovery);
    let mut at = warmup;
    for fault in &mut faults {
        fault.at = at;
        at += fault.nominal() + recovery;
    }
    faults
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub name: String,
    /// Seconds after the load started.
    pub at_seconds: f64,
    /// From the first step until every process it touched was ready again.
    pub took_seconds: f64,
    pub outages: Vec<Outage>,
}

/// One process down (or frozen) during a fault.
#[derive(Debug, Clone, Serialize)]
pub struct Outage {
    pub component: Component,
    /// `SIGKILL`, `crash` or `SIGSTOP`.
    pub how: &'static str,
    /// From the kill (or SIGSTOP) until it was ready again (or thawed); `None`: it never was.
    pub down_seconds: Option<f64>,
}

/// What the schedule did, and what went wrong with the processes meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub records: Vec<FaultRecord>,
    /// Processes that did not come back, exited by themselves, or could not be signalled.
    pub problems: Vec<String>,
    /// Processes checked for being up (before and after each fault).
    pub checks: u64,
}

/// A process being taken down in the current fault.
struct Down {
    component: Component,
    how: &'static str,
    since: Instant,
    /// "consuming" lines in a worker's log when it was killed: one more means it is back.
    consuming_mark: usize,
    /// The database node or etcd member it was, for a part of the Patroni cluster; for a
    /// switchover, the leader it moved away from.
    node: Option<usize>,
    ready_at: Option<Instant>,
}

/// Runs the faults at their planned times (never closer than a few seconds to the previous one's
/// recovery); returns when the last one has recovered.
pub(crate) async fn execute(
    pipeline: &mut Pipeline,
    plan: &[Fault],
    start: Instant,
    config: &Config,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut previous_end = start;
    for fault in plan {
        let when = (start + fault.at).max(previous_end + Duration::from_secs(3));
        tokio::time::sleep_until(when).await;
        check_up(
            pipeline,
            &format!("before \"{}\"", fault.name),
            config,
            &mut outcome,
        )
        .await;
        tracing::info!(
            at = start.elapsed().as_secs_f64(),
            fault = %fault.name,
            "chaos: fault"
        );
        let record = run_fault(pipeline, fault, start, config, &mut outcome).await;
        tracing::info!(
            took = record.took_seconds,
            outages = ?record
                .outages
                .iter()
                .map(|o| format!("{} {:?}", o.component, o.down_seconds))
                .collect::<Vec<_>>(),
            "chaos: recovered"
        );
        outcome.records.push(record);
        previous_end = Instant::now();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    check_up(pipeline, "after the last fault", config, &mut outcome).await;
    outcome
}

async fn run_fault(
    pipeline: &mut Pipeline,
    fault: &Fault,
    start: Instant,
    config: &Config,
    outcome: &mut Outcome,
) -> FaultRecord {
    let began = Instant::now();
    let mut downs: Vec<Down> = Vec::new();
    for step in &fault.steps {
        match *step {
            Step::Wait(wait) => tokio::time::sleep(wait).await,
            Step::Kill(component) if component.is_database_cluster() => {
                let etcd_member = outcome.records.len() % 3;
                match database::kill(pipeline, component, etcd_member) {
                    Ok(node) => downs.push(Down {
                        component,
                        how: "SIGKILL",
                        since: Instant::now(),
                        consuming_mark: 0,
                        node: Some(node),
                        ready_at: None,
                    }),
                    Err(problem) => outcome.problems.push(problem),
                }
            }
            Step::Kill(component) => {
                let consuming_mark = consuming_lines(pipeline, component);
                if let Err(problem) = kill_component(pipeline, component) {
                    outcome.problems.push(problem);
                }
                downs.push(Down {
                    component,
                    how: if component == Component::Postgres {
                        "crash"
                    } else {
                        "SIGKILL"
                    },
                    since: Instant::now(),
                    consuming_mark,
                    node: None,
                    ready_at: None,
                });
            }
            Step::Start(component) if component.is_database_cluster() => {
                let node = downs
                    .iter()
                    .rev()
                    .find(|d| d.component == component)
                    .and_then(|d| d.node);
                if let Some(node) = node
                    && let Err(problem) = database::start(pipeline, component, node)
                {
                    outcome.problems.push(problem);
                }
            }
            Step::Start(component) => {
                if let Err(problem) = start_component(pipeline, component) {
                    outcome.problems.push(problem);
                }
            }
            Step::Switchover => match database::switchover(pipeline) {
                Ok(old_leader) => downs.push(Down {
                    component: Component::DbLeader,
                    how: "switchover",
                    since: Instant::now(),
                    consuming_mark: 0,
                    node: Some(old_leader),
                    ready_at: None,
                }),
                Err(problem) => outcome.problems.push(problem),
            },
            Step::Freeze(component) => {
                if let Err(problem) = signal(pipeline, component, "STOP") {
                    outcome.problems.push(problem);
                }
                downs.push(Down {
                    component,
                    how: "SIGSTOP",
                    since: Instant::now(),
                    consuming_mark: 0,
                    node: None,
                    ready_at: None,
                });
            }
            Step::Thaw(component) => {
                if let Err(problem) = signal(pipeline, component, "CONT") {
                    outcome.problems.push(problem);
                }
                let now = Instant::now();
                for down in downs.iter_mut().filter(|d| d.component == component) {
                    down.ready_at.get_or_insert(now);
                }
            }
        }
    }
    wait_ready(pipeline, &mut downs, config.ready_timeout).await;
    for down in downs.iter().filter(|d| d.ready_at.is_none()) {
        outcome.problems.push(format!(
            "{} was not ready {:.0} s after \"{}\"{}",
            down.component,
            config.ready_timeout.as_secs_f64(),
            fault.name,
            log_tail(pipeline, down.component)
        ));
    }
    FaultRecord {
        name: fault.name.clone(),
        at_seconds: (began - start).as_secs_f64(),
        took_seconds: began.elapsed().as_secs_f64(),
        outages: downs
            .iter()
            .map(|down| Outage {
                component: down.component,
                how: down.how,
                down_seconds: down
                    .ready_at
                    .map(|ready| (ready - down.since).as_secs_f64()),
            })
            .collect(),
    }
}

/// Polls every process of `downs` that is not ready yet until all are, or `timeout` passes.
async fn wait_ready(pipeline: &mut Pipeline, downs: &mut [Down], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok();
    loop {
        for down in downs.iter_mut() {
            if down.ready_at.is_none() && is_ready(pipeline, down, http.as_ref()).await {
                down.ready_at = Some(Instant::now());
            }
        }
        if downs.iter().all(|d| d.ready_at.is_some()) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a process is back: PostgreSQL and nats-server when they run (their start waits until
/// they take clients), the event store when it accepts TCP, ordersvc when `/healthz` says 200, a
/// worker when its log says it is consuming again.
async fn is_ready(pipeline: &mut Pipeline, down: &Down, http: Option<&reqwest::Client>) -> bool {
    match down.component {
        cluster if cluster.is_database_cluster() => {
            tokio::task::block_in_place(|| database::is_back(pipeline, down))
        }
        Component::Postgres => pipeline.postgres.is_running(),
        Component::NatsServer => pipeline.nats.is_running(),
        Component::Eventstore => match eventstore_addr(pipeline) {
            Some(addr) => {
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await
                    .is_ok_and(|connected| connected.is_ok())
            }
            None => false,
        },
        Component::Ordersvc => match http {
            Some(http) => http
                .get(format!("{}/healthz", pipeline.base_url()))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success()),
            None => false,
        },
        worker => {
            is_running(pipeline, worker) && consuming_lines(pipeline, worker) > down.consuming_mark
        }
    }
}

fn eventstore_addr(pipeline: &Pipeline) -> Option<SocketAddr> {
    pipeline
        .env()
        .into_iter()
        .rev()
        .find(|(key, _)| key == "EVENTSTORE_ADDR")
        .and_then(|(_, addr)| addr.parse().ok())
}

/// Lines of a worker's log saying that it (re)started consuming, or of the watcher's saying that
/// it (re)started watching.
fn consuming_lines(pipeline: &Pipeline, component: Component) -> usize {
    let started = match component {
        Component::Deadlinewatcher => "deadlinewatcher watching",
        worker if worker.is_worker() => " consuming consumer=",
        _ => return 0,
    };
    pipeline
        .log(component.name(), 0)
        .lines()
        .filter(|line| line.contains(started))
        .count()
}

/// The Patroni cluster's faults (`--schedule db`): which node a role names now, killing and
/// starting it, and when it is back.
mod database {
    use testkit::patroni::{PgCluster, Role};

    use super::{Component, Down, Pipeline};

    fn cluster(pipeline: &mut Pipeline) -> Result<&mut PgCluster, String> {
        pipeline
            .pg_cluster
            .as_mut()
            .ok_or_else(|| "the database schedule needs the Patroni cluster".to_owned())
    }

    /// Kills what `component` names now; returns the node (or etcd member) it was.
    pub(super) fn kill(
        pipeline: &mut Pipeline,
        component: Component,
        etcd_member: usize,
    ) -> Result<usize, String> {
        tokio::task::block_in_place(|| {
            let cluster = cluster(pipeline)?;
            let failed = |error: anyhow::Error| format!("killing {component}: {error:#}");
            match component {
                Component::DbLeader => {
                    let leader = cluster.leader().map_err(failed)?;
                    cluster.kill_node(leader).map_err(failed)?;
                    Ok(leader)
                }
                Component::DbSyncStandby => {
                    let standby = cluster.sync_standby().map_err(failed)?;
                    cluster.kill_node(standby).map_err(failed)?;
                    Ok(standby)
                }
                Component::DbLeaderPostgres => {
                    let leader = cluster.leader().map_err(failed)?;
                    cluster.kill_postgres(leader).map_err(failed)?;
                    Ok(leader)
                }
                Component::Etcd => {
                    cluster.kill_etcd(etcd_member).map_err(failed)?;
                    Ok(etcd_member)
                }
                other => Err(format!("{other} is not a part of the database cluster")),
            }
        })
    }

    /// Starts `node` again (its Patroni, or the etcd member); the leader's PostgreSQL alone is
    /// started by its own Patroni.
    pub(super) fn start(
        pipeline: &mut Pipeline,
        component: Component,
        node: usize,
    ) -> Result<(), String> {
        tokio::task::block_in_place(|| {
            let cluster = cluster(pipeline)?;
            let result = match component {
                Component::DbLeader | Component::DbSyncStandby => cluster.start_node(node),
                Component::Etcd => cluster.start_etcd(node),
                _ => Ok(()),
            };
            result.map_err(|error| format!("{component} did not start again: {error:#}"))
        })
    }

    /// Switches the leadership over to the synchronous standby; returns the old leader.
    pub(super) fn switchover(pipeline: &mut Pipeline) -> Result<usize, String> {
        tokio::task::block_in_place(|| {
            let cluster = cluster(pipeline)?;
            let failed = |error: anyhow::Error| format!("switchover: {error:#}");
            let leader = cluster.leader().map_err(failed)?;
            cluster.switchover(None).map_err(failed)?;
            Ok(leader)
        })
    }

    /// Whether the part of `down` is back: a leader leads, every node runs and follows its
    /// timeline (so a killed node has rejoined), a killed etcd member answers; after a
    /// switchover, another node leads.
    pub(super) fn is_back(pipeline: &mut Pipeline, down: &Down) -> bool {
        let Some(cluster) = pipeline.pg_cluster.as_ref() else {
            return false;
        };
        if down.component == Component::Etcd {
            return down
                .node
                .is_some_and(|member| cluster.layout().etcd_healthy(member));
        }
        let Ok(members) = cluster.members() else {
            return false;
        };
        let Some(leader) = members.iter().find(|m| m.role == Role::Leader) else {
            return false;
        };
        let whole = members.len() == 3
            && members
                .iter()
                .all(|m| m.is_running() && m.timeline == leader.timeline);
        let moved = down.how != "switchover" || down.node != Some(leader.index);
        whole && moved
    }
}

fn is_running(pipeline: &mut Pipeline, component: Component) -> bool {
    if component.is_database_cluster() {
        return pipeline.pg_cluster.is_some();
    }
    match component.service() {
        Some(service) => pipeline.is_running(service, 0),
        None if component == Component::NatsServer => pipeline.nats.is_running(),
        None => pipeline.postgres.is_running(),
    }
}

fn kill_component(pipeline: &mut Pipeline, component: Component) -> Result<(), String> {
    // Killing and starting servers blocks (pg_ctl waits); the load goes on on the other threads.
    tokio::task::block_in_place(|| match component.service() {
        Some(service) => {
            pipeline.kill(service, 0);
            Ok(())
        }
        None if component == Component::NatsServer => pipeline
            .nats
            .stop()
            .map_err(|error| format!("killing nats-server failed: {error:#}")),
        None => pipeline
            .postgres
            .kill()
            .map_err(|error| format!("crashing PostgreSQL failed: {error:#}")),
    })
}

fn start_component(pipeline: &mut Pipeline, component: Component) -> Result<(), String> {
    tokio::task::block_in_place(|| match component.service() {
        Some(service) => {
            pipeline.restart(service, 0);
            Ok(())
        }
        None if component == Component::NatsServer => pipeline
            .nats
            .start_again()
            .map_err(|error| format!("nats-server did not start again: {error:#}")),
        None => pipeline
            .postgres
            .start_again()
            .map_err(|error| format!("PostgreSQL did not start again: {error:#}")),
    })
}

fn signal(pipeline: &mut Pipeline, component: Component, signal: &str) -> Result<(), String> {
    let Some(service) = component.service() else {
        return Err(format!("cannot send SIG{signal} to {component}"));
    };
    if !pipeline.is_running(service, 0) {
        return Err(format!(
            "{component} was not running when SIG{signal} was due{}",
            log_tail(pipeline, component)
        ));
    }
    pipeline.signal(service, 0, signal);
    Ok(())
}

/// Every process that should be up is; one that exited by itself is a problem, and is started
/// again so the run goes on.
async fn check_up(pipeline: &mut Pipeline, when: &str, config: &Config, outcome: &mut Outcome) {
    for component in SINGLES {
        outcome.checks += 1;
        if is_running(pipeline, component) {
            continue;
        }
        outcome.problems.push(format!(
            "{component} had exited by itself {when}{}",
            log_tail(pipeline, component)
        ));
        let mut downs = vec![Down {
            component,
            how: "exited",
            since: Instant::now(),
            consuming_mark: consuming_lines(pipeline, component),
            node: None,
            ready_at: None,
        }];
        if let Err(problem) = start_component(pipeline, component) {
            outcome.problems.push(problem);
        }
        wait_ready(pipeline, &mut downs, config.ready_timeout).await;
    }
}

/// The end of a service's log, for a problem's description.
fn log_tail(pipeline: &Pipeline, component: Component) -> String {
    let log = match component.service() {
        Some(service) => pipeline.log(service, 0),
        None if component.is_database_cluster() => pipeline
            .pg_cluster
            .as_ref()
            .map(testkit::patroni::PgCluster::logs)
            .unwrap_or_default(),
        None if component == Component::NatsServer => pipeline.nats.log(),
        None => pipeline.postgres.log(),
    };
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n      ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; end of its log:\n      {tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killed(faults: &[Fault]) -> Vec<Component> {
        let mut killed: Vec<Component> = faults
            .iter()
            .flat_map(|f| f.steps.iter())
            .filter_map(|step| match step {
                Step::Kill(component) => Some(*component),
                _ => None,
            })
            .collect();
        killed.sort();
        killed.dedup();
        killed
    }

    fn frozen_longer_than_the_ack_wait(faults: &[Fault]) -> bool {
        faults.iter().any(|f| {
            matches!(f.steps.first(), Some(Step::Freeze(_)))
                && f.steps
                    .iter()
                    .any(|step| matches!(step, Step::Wait(wait) if *wait > Duration::from_secs(30)))
        })
    }

    #[test]
    fn both_schedules_kill_every_process_and_freeze_a_worker_past_the_ack_wait() {
        for config in [
            Config::ci(1),
            Config::new(Duration::from_secs(180), 10.0, 1),
        ] {
            let faults = plan(&config);
            let mut every = SINGLES.to_vec();
            every.sort();
            assert_eq!(killed(&faults), every);
            assert!(frozen_longer_than_the_ack_wait(&faults), "{faults:?}");
        }
    }

    #[test]
    fn the_database_schedule_strikes_every_part_of_the_cluster_and_repeats_when_there_is_room() {
        let config = |seconds| Config {
            schedule: Schedule::Db,
            ..Config::new(Duration::from_secs(seconds), 10.0, 5)
        };
        let once = plan(&config(60));
        assert_eq!(
            killed(&once),
            [
                Component::DbLeader,
                Component::DbSyncStandby,
                Component::DbLeaderPostgres,
                Component::Etcd
            ],
            "{once:?}"
        );
        assert!(
            once.iter()
                .any(|f| f.steps.iter().any(|s| matches!(s, Step::Switchover))),
            "a switchover: {once:?}"
        );
        // Nothing but the cluster is struck: the services ride through on their own.
        assert!(once.iter().flat_map(|f| &f.steps).all(|step| match step {
            Step::Kill(c) | Step::Start(c) => c.is_database_cluster(),
            Step::Switchover | Step::Wait(_) => true,
            Step::Freeze(_) | Step::Thaw(_) => false,
        }));
        let longer = plan(&config(600));
        assert!(longer.len() >= 2 * once.len(), "{} faults", longer.len());
    }

    #[test]
    fn the_full_schedule_fits_its_duration_and_repeats_when_there_is_room() {
        let three_minutes = plan(&Config::new(Duration::from_secs(180), 10.0, 3));
        assert_eq!(three_minutes.len(), 12, "one pass: {three_minutes:?}");
        let last = three_minutes.last().expect("faults");
        assert!(
            last.at + last.nominal() <= Duration::from_secs(180),
            "the last fault ends at {:?}",
            last.at + last.nominal()
        );
        let ten_minutes = plan(&Config::new(Duration::from_secs(600), 10.0, 3));
        assert!(ten_minutes.len() >= 22, "{} faults", ten_minutes.len());
    }

    #[test]
    fn the_deadline_schedule_lets_every_deadline_fall_while_its_step_is_away() {
        let faults = plan(&Config::deadlines_ci(5));
        let pause = Duration::from_secs(5);
        for component in [
            Component::Paymentworker,
            Component::Reviewworker,
            Component::Querymodelworker,
        ] {
            assert!(
                faults.iter().any(
                    |f| matches!(f.steps.first(), Some(Step::Freeze(c)) if *c == component)
                        && f.steps
                            .iter()
                            .any(|step| matches!(step, Step::Wait(wait) if *wait >= pause))
                ),
                "{component} frozen past the 3 s deadlines: {faults:?}"
            );
        }
        let killed = killed(&faults);
        for component in [Component::Deadlinewatcher, Component::Eventstore] {
            assert!(killed.contains(&component), "{component}: {faults:?}");
        }
    }

    #[test]
    fn faults_are_planned_in_order_with_room_to_recover() {
        let faults = plan(&Config::new(Duration::from_secs(180), 10.0, 9));
        for pair in faults.windows(2) {
            assert!(
                pair[1].at >= pair[0].at + pair[0].nominal() + Duration::from_secs(6),
                "{} then {}",
                pair[0].name,
                pair[1].name
            );
        }
    }
}
