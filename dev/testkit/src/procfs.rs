//! What `/proc` says of a process's and of the machine's CPU time: the benchmarks' measure of
//! where the time goes (`devstack bench`, eventstore's append bench).

use std::path::Path;

/// Clock ticks per second of `/proc`'s CPU times (USER_HZ: 100 on every mainstream Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` the benchmarks read.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcStat {
    /// The program's name (`comm`).
    pub comm: String,
    pub ppid: u32,
    /// utime + stime, in ticks.
    pub own_ticks: u64,
    /// cutime + cstime: the children it has waited for, in ticks.
    pub reaped_ticks: u64,
}

/// One `stat` line. The name may hold spaces and parentheses: the fields that follow start after
/// the last ')'. After it: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(ProcStat {
        comm,
        ppid: u32::try_from(number(1)?).ok()?,
        own_ticks: number(11)? + number(12)?,
        reaped_ticks: number(13)? + number(14)?,
    })
}

/// A `stat` file: `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`.
pub fn stat(path: &Path) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// `/proc/<pid>/stat` (`pid` may be `self`).
pub fn process(pid: &str) -> Option<ProcStat> {
    stat(&Path::new("/proc").join(pid).join("stat"))
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of one `status` file: the times a
/// thread went to sleep and was woken again, or was preempted.
pub fn parse_switches(text: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines() {
        let count = line
            .strip_prefix("voluntary_ctxt_switches:")
            .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
        if let Some(count) = count {
            *total.get_or_insert(0) += count.trim().parse::<u64>().ok()?;
        }
    }
    total
}

/// Context switches of every live thread of a process so far (`/proc/<pid>/task/*/status`).
pub fn switches(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(Path::new("/proc").join(pid).join("task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|task| {
                parse_switches(&std::fs::read_to_string(task.path().join("status")).ok()?)
            })
            .sum(),
    )
}

/// `/proc/stat`'s first line: the ticks all cores were busy (user, nice, system, irq, softirq,
/// steal; not idle nor iowait).
pub fn parse_machine_busy(text: &str) -> Option<u64> {
    let line = text.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// The machine's busy ticks so far, over all cores.
pub fn machine_busy_ticks() -> Option<u64> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}
