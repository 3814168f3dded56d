//! What a phase of the benchmark costs: CPU seconds and context switches of every process of the
//! stack (from `/proc`; an HA cluster's by group: PostgreSQL, Patroni and etcd ×3, HAProxy), the
//! machine's busy time, and commits and rollbacks per database (`pg_stat_database`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use sqlx::PgPool;
use testkit::patroni::{HaLayout, NODES};
use testkit::procfs;

use crate::stack::ha::{ETCD, HAPROXY, PATRONI};

/// The stack's processes whose CPU is counted, by the name of their pid file.
pub const PROCESSES: [&str; 8] = [
    "ordersvc",
    "eventstore",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
    "deadlinewatcher",
    "nats-server",
    "tracestore",
];

/// The label of the load generator's CPU: the benchmark's reaped children (`orderctl load`).
pub const LOAD_GENERATOR: &str = "load generator";

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    /// CPU seconds by process.
    pub cpu: BTreeMap<String, f64>,
    /// Context switches by process, of its live threads (PostgreSQL: of its live backends).
    pub switches: BTreeMap<String, i64>,
    /// The machine's busy seconds (user, nice, system, irq, softirq, steal) over all cores.
    pub machine: f64,
    pub commits: BTreeMap<String, i64>,
    pub rollbacks: BTreeMap<String, i64>,
}

/// The pid in `<pids>/<name>.pid`, if the file holds one.
pub(super) fn pid_of(pids: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(pids.join(format!("{name}.pid"))).ok()?;
    let pid = text.split_whitespace().next()?;
    pid.chars()
        .all(|c| c.is_ascii_digit())
        .then(|| pid.to_owned())
}

/// The live processes of each parent: their own ticks summed, and their pids.
#[derive(Default)]
struct Children {
    ticks: u64,
    pids: Vec<u32>,
}

/// CPU ticks and context switches of a process. Ticks: its own and the children it reaped;
/// switches: of its live threads. With `children` (from one scan of `/proc`), its live children's
/// are added: a postmaster's backends and walsenders come and go (the switches of the ones that
/// ended are not counted). Patroni's and HAProxy's live children are not added: a postmaster may
/// be one of them.
fn tree(pid: u32, children: Option<&BTreeMap<u32, Children>>) -> Option<(u64, u64)> {
    let id = pid.to_string();
    let own = procfs::process(&id)?;
    let switched = procfs::switches(&id).unwrap_or(0);
    let (live_ticks, live_switches) = children.and_then(|c| c.get(&pid)).map_or((0, 0), |live| {
        let switched = live
            .pids
            .iter()
            .filter_map(|child| procfs::switches(&child.to_string()))
            .sum();
        (live.ticks, switched)
    });
    Some((
        own.own_ticks + own.reaped_ticks + live_ticks,
        switched + live_switches,
    ))
}

/// The live processes summed by parent pid.
fn children_by_parent() -> anyhow::Result<BTreeMap<u32, Children>> {
    let mut by_parent: BTreeMap<u32, Children> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        if let Some(child) = procfs::stat(&entry.path().join("stat")) {
            let parent = by_parent.entry(child.ppid).or_default();
            parent.ticks += child.own_ticks;
            parent.pids.push(pid);
        }
    }
    Ok(by_parent)
}

/// CPU of the stack's processes (PostgreSQL: every postmaster with its live backends and the
/// ones it reaped; with `ha`, also Patroni, etcd and HAProxy, each group summed over its
/// members), of this process's reaped children (the load generator), the machine's busy time,
/// and the commits and rollbacks of every database `postgres` reaches (with `ha`, the leader's:
/// a replica commits nothing of its own).
pub async fn snapshot(
    pids: &Path,
    ha: Option<&HaLayout>,
    postgres: &PgPool,
) -> anyhow::Result<Snapshot> {
    let seconds = |ticks: u64| ticks as f64 / procfs::TICKS_PER_SECOND;
    let mut cpu = BTreeMap::new();
    let mut switches = BTreeMap::new();
    for name in PROCESSES {
        let Some(pid) = pid_of(pids, name) else {
            continue;
        };
        if let Some(stat) = procfs::process(&pid) {
            cpu.insert(name.to_owned(), seconds(stat.own_ticks));
        }
        if let Some(count) = procfs::switches(&pid) {
            switches.insert(name.to_owned(), i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
    let children = children_by_parent()?;
    let sum = |pids: &[u32], postmasters: bool| -> Option<(f64, i64)> {
        let children = postmasters.then_some(&children);
        let members: Vec<(u64, u64)> = pids.iter().filter_map(|&pid| tree(pid, children)).collect();
        (!members.is_empty()).then(|| {
            let ticks: u64 = members.iter().map(|(ticks, _)| ticks).sum();
            let switched: u64 = members.iter().map(|(_, switched)| switched).sum();
            (seconds(ticks), i64::try_from(switched).unwrap_or(i64::MAX))
        })
    };
    let from_files = |names: &[&str]| -> Vec<u32> {
        names
            .iter()
            .filter_map(|name| pid_of(pids, name)?.parse().ok())
            .collect()
    };
    // (label, pids, whether they are postmasters)
    let groups: Vec<(String, Vec<u32>, bool)> = match ha {
        None => vec![("postgresql".to_owned(), from_files(&["postgresql"]), true)],
        Some(layout) => vec![
            (
                format!("postgresql ×{NODES}"),
                (0..NODES)
                    .filter_map(|i| layout.postmaster_pid(i))
                    .collect(),
                true,
            ),
            (format!("patroni ×{NODES}"), from_files(&PATRONI), false),
            (format!("etcd ×{NODES}"), from_files(&ETCD), false),
            (HAPROXY.to_owned(), from_files(&[HAPROXY]), false),
        ],
    };
    for (label, members, postmasters) in groups {
        if let Some((seconds, switched)) = sum(&members, postmasters) {
            cpu.insert(label.clone(), seconds);
            switches.insert(label, switched);
        }
    }
    if let Some(me) = procfs::process("self") {
        cpu.insert(LOAD_GENERATOR.to_owned(), seconds(me.reaped_ticks));
    }
    let machine = seconds(procfs::machine_busy_ticks().unwrap_or(0));
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT coalesce(datname, '-'), xact_commit, xact_rollback FROM pg_stat_database",
    )
    .fetch_all(postgres)
    .await?;
    let mut commits = BTreeMap::new();
    let mut rollbacks = BTreeMap::new();
    for (database, committed, rolled_back) in rows {
        commits.insert(database.clone(), committed);
        rollbacks.insert(database, rolled_back);
    }
    Ok(Snapshot {
        at: Instant::now(),
        cpu,
        switches,
        machine,
        commits,
        rollbacks,
    })
}

/// CPU milliseconds and context switches per order between two snapshots, by process, over
/// `orders` orders. The load generator's CPU is left out: it is not the pipeline's. A counter that
/// went back (a process restarted) counts nothing.
pub fn per_order(
    before: &Snapshot,
    after: &Snapshot,
    orders: u64,
) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let orders = orders.max(1) as f64;
    let cpu = difference(&before.cpu, &after.cpu)
        .into_iter()
        .filter(|(process, _)| process != LOAD_GENERATOR)
        .map(|(process, seconds)| (process, seconds.max(0.0) * 1000.0 / orders))
        .collect();
    let switches = difference(&before.switches, &after.switches)
        .into_iter()
        .map(|(process, count)| (process, count.max(0) as f64 / orders))
        .collect();
    (cpu, switches)
}

/// `after - before` per key of `after` (a key missing before counts from zero).
pub fn difference<T>(
    before: &BTreeMap<String, T>,
    after: &BTreeMap<String, T>,
) -> BTreeMap<String, T>
where
    T: Copy + Default + std::ops::Sub<Output = T>,
{
    after
        .iter()
        .map(|(key, value)| {
            let base = before.get(key).copied().unwrap_or_default();
            (key.clone(), *value - base)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cpu: &[(&str, f64)], switches: &[(&str, i64)]) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            cpu: cpu.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            switches: switches
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            machine: 0.0,
            commits: BTreeMap::new(),
            rollbacks: BTreeMap::new(),
        }
    }

    #[test]
    fn per_order_figures_leave_out_the_load_generator_and_restarted_counters() {
        let before = at(
            &[("eventstore", 1.0), (LOAD_GENERATOR, 0.0)],
            &[("eventstore", 100), ("ordersvc", 900)],
        );
        let after = at(
            &[("eventstore", 1.5), (LOAD_GENERATOR, 2.0)],
            &[("eventstore", 1100), ("ordersvc", 40)],
        );
        let (cpu, switches) = per_order(&before, &after, 100);
        assert_eq!(cpu, BTreeMap::from([("eventstore".to_owned(), 5.0)]));
        assert_eq!(
            switches,
            BTreeMap::from([
                ("eventstore".to_owned(), 10.0),
                ("ordersvc".to_owned(), 0.0)
            ])
        );
    }

    #[test]
    fn a_difference_counts_a_new_key_from_zero() {
        let before = BTreeMap::from([("a".to_owned(), 5_i64)]);
        let after = BTreeMap::from([("a".to_owned(), 8_i64), ("b".to_owned(), 2)]);
        assert_eq!(
            difference(&before, &after),
            BTreeMap::from([("a".to_owned(), 3), ("b".to_owned(), 2)])
        );
    }
}
