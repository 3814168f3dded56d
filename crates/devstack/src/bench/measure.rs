//! What a phase of the benchmark costs: CPU seconds of every process of the stack (from `/proc`),
//! the machine's busy time, and commits and rollbacks per database (`pg_stat_database`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use sqlx::PgPool;

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
    /// The machine's busy seconds (user, nice, system, irq, softirq, steal) over all cores.
    pub machine: f64,
    pub commits: BTreeMap<String, i64>,
    pub rollbacks: BTreeMap<String, i64>,
}

/// The fields of `/proc/<pid>/stat` a snapshot needs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    ppid: u32,
    own: u64,
    reaped_children: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The name (field 2) may hold spaces and parentheses: the fields that follow start after the
    // last ')'. After it: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(number(1)?).ok()?,
        own: number(11)? + number(12)?,
        reaped_children: number(13)? + number(14)?,
    })
}

fn stat(pid: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/stat`'s first line: the busy ticks of all cores.
fn parse_machine(text: &str) -> Option<u64> {
    let line = text.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

fn pid_of(pids: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(pids.join(format!("{name}.pid"))).ok()?;
    let pid = text.split_whitespace().next()?;
    pid.chars()
        .all(|c| c.is_ascii_digit())
        .then(|| pid.to_owned())
}

/// CPU of the stack's processes (PostgreSQL: the postmaster, its live backends and the ones it
/// reaped), of this process's reaped children (the load generator), the machine's busy time, and
/// the commits and rollbacks of every database.
pub async fn snapshot(pids: &Path, postgres: &PgPool) -> anyhow::Result<Snapshot> {
    let tick = clock_ticks_per_second();
    let mut cpu = BTreeMap::new();
    for name in PROCESSES {
        if let Some(stat) = pid_of(pids, name).and_then(|pid| stat(&pid)) {
            cpu.insert(name.to_owned(), stat.own as f64 / tick);
        }
    }
    if let Some(postmaster) = pid_of(pids, "postgresql")
        && let Some(own) = stat(&postmaster)
    {
        let postmaster_pid: u32 = postmaster.parse().unwrap_or(0);
        let mut ticks = own.own + own.reaped_children;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str() else { continue };
            if pid.chars().all(|c| c.is_ascii_digit())
                && let Some(child) = stat(pid)
                && child.ppid == postmaster_pid
            {
                ticks += child.own;
            }
        }
        cpu.insert("postgresql".to_owned(), ticks as f64 / tick);
    }
    if let Some(me) = stat("self") {
        cpu.insert(LOAD_GENERATOR.to_owned(), me.reaped_children as f64 / tick);
    }
    let machine = parse_machine(&std::fs::read_to_string("/proc/stat")?).unwrap_or(0) as f64 / tick;
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
        machine,
        commits,
        rollbacks,
    })
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

    #[test]
    fn a_stat_line_is_read_after_the_last_parenthesis_of_the_name() {
        let line = "4242 (tokio (rt) x) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 50 7 3 20 0 9 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 17,
                own: 300,
                reaped_children: 10
            })
        );
        assert_eq!(parse_stat("4242 (broken"), None);
        assert_eq!(parse_stat("1 (x) S 0 1"), None);
    }

    #[test]
    fn the_machine_is_busy_for_everything_but_idle_and_iowait() {
        let text = "cpu  100 5 40 9000 300 2 3 4 0 0\ncpu0 50 2 20 4500 150 1 1 2 0 0\n";
        assert_eq!(parse_machine(text), Some(100 + 5 + 40 + 2 + 3 + 4));
        assert_eq!(parse_machine("cpu  x"), None);
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
