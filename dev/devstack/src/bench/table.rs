//! The rows a benchmark run measures and the Markdown it prints (and adds to BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use super::stack::Profile;

/// Whose binaries a row measured: `--baseline-bin DIR`'s, or the ones beside the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binaries {
    Baseline,
    Current,
}

impl std::fmt::Display for Binaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Binaries::Baseline => "baseline",
            Binaries::Current => "current",
        })
    }
}

/// The label of a row of ratios, current ÷ baseline.
const RATIO: &str = "current ÷ baseline";

/// A saturated phase: as many orders as the pipeline takes, then until all are final.
#[derive(Debug, Clone, PartialEq)]
pub struct Saturated {
    pub profile: Profile,
    pub binaries: Binaries,
    /// The round of `--rounds` (from 1); a row is compared with the other set's of its round.
    pub round: u32,
    /// The phase; an HA row is compared with the single row of the same name.
    pub name: String,
    /// POSTs answered 201, and the ones that were not.
    pub accepted: u64,
    pub refused: u64,
    /// Accepted POSTs per second while the load ran.
    pub posts_per_s: f64,
    pub finals: u64,
    /// First POST → the last order seen final.
    pub seconds: f64,
    /// CPU milliseconds per final order, by process.
    pub cpu_ms_per_order: BTreeMap<String, f64>,
    /// Context switches per final order, by process: how often it was woken.
    pub switches_per_order: BTreeMap<String, f64>,
    pub commits: i64,
    pub rollbacks: i64,
    /// Busy share of the whole machine over the phase, in % of one core.
    pub busy_pct: f64,
}

impl Saturated {
    pub fn orders_per_s(&self) -> f64 {
        ratio(self.finals as f64, self.seconds)
    }

    pub fn cpu_ms_per_order_total(&self) -> f64 {
        self.cpu_ms_per_order.values().sum()
    }

    pub fn commits_per_order(&self) -> f64 {
        ratio(self.commits as f64, self.finals as f64)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} orders final in {:.1} s: {:.0} orders/s; {} POSTs accepted, {} not; CPU {:.2} ms/order; \
             commits/order {:.2}; rollbacks/order {:.3}; machine {:.0}% busy",
            self.finals,
            self.seconds,
            self.orders_per_s(),
            self.accepted,
            self.refused,
            self.cpu_ms_per_order_total(),
            self.commits_per_order(),
            ratio(self.rollbacks as f64, self.finals as f64),
            self.busy_pct,
        )
    }
}

/// A steady-rate phase: POST → final latencies as `orderctl load` measured them.
#[derive(Debug, Clone, PartialEq)]
pub struct Steady {
    pub profile: Profile,
    pub binaries: Binaries,
    /// The round of `--rounds` (from 1).
    pub round: u32,
    pub rate: f64,
    pub accepted: u64,
    pub errors: u64,
    pub not_final: u64,
    pub followed_by: String,
    /// CPU milliseconds per accepted order, by process (settling included): at a steady rate
    /// most of it is the price of being woken.
    pub cpu_ms_per_order: BTreeMap<String, f64>,
    /// Context switches per accepted order, by process.
    pub switches_per_order: BTreeMap<String, f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Steady {
    pub fn summary(&self) -> String {
        format!(
            "accepted {}, errors {}, not final {}, by {}: POST → final p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
            self.accepted,
            self.errors,
            self.not_final,
            self.followed_by,
            millis(self.p50_ms),
            millis(self.p95_ms),
            millis(self.p99_ms),
            millis(self.max_ms),
        )
    }
}

/// An append step: the event store alone (the workers and ordersvc stopped), `clients` closed-loop
/// gRPC clients each appending chains of events to aggregates of their own.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    pub binaries: Binaries,
    pub clients: usize,
    /// Appends answered OK, and the ones that were not.
    pub appends: u64,
    pub errors: u64,
    /// The first refusal, to say why there were errors.
    pub first_error: Option<String>,
    /// How long the clients appended.
    pub seconds: f64,
    /// CreateEvent as the client saw it.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// CPU milliseconds per 1000 appends, by server process (the in-process client not counted).
    pub cpu_ms_per_1000: BTreeMap<String, f64>,
    /// Transactions committed in eventstoredb (the bench's own queries taken off).
    pub commits: i64,
    /// Outbox rows still unpublished when the clients stopped, and how long the relay then took
    /// to publish them all (JetStream acked them).
    pub outbox_at_end: i64,
    pub drain_ms: f64,
}

impl Append {
    pub fn appends_per_s(&self) -> f64 {
        ratio(self.appends as f64, self.seconds)
    }

    pub fn cpu_ms_per_1000_total(&self) -> f64 {
        self.cpu_ms_per_1000.values().sum()
    }

    pub fn commits_per_append(&self) -> f64 {
        ratio(self.commits as f64, self.appends as f64)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} appends in {:.1} s: {:.0}/s, {} errors; CreateEvent p50 {} ms, p99 {} ms, max {} ms; \
             CPU {:.1} ms per 1000 appends; commits/append {:.3}; outbox {} at the end, empty {:.0} ms later",
            self.appends,
            self.seconds,
            self.appends_per_s(),
            self.errors,
            millis(self.p50_ms),
            millis(self.p99_ms),
            millis(self.max_ms),
            self.cpu_ms_per_1000_total(),
            self.commits_per_append(),
            self.outbox_at_end,
            self.drain_ms,
        )
    }
}

/// Rows in print order: each current row after the baseline row it is compared with (`same`),
/// followed by `Some(baseline)` to print their ratios; a row without a partner stands alone.
fn paired<T>(
    rows: &[T],
    binaries: impl Fn(&T) -> Binaries,
    same: impl Fn(&T, &T) -> bool,
) -> Vec<(&T, Option<&T>)> {
    let partner = |row: &T, wanted: Binaries| {
        rows.iter()
            .find(|other| binaries(other) == wanted && same(row, other))
    };
    let mut out = Vec::new();
    for row in rows {
        match binaries(row) {
            Binaries::Baseline if partner(row, Binaries::Current).is_some() => {}
            Binaries::Baseline => out.push((row, None)),
            Binaries::Current => match partner(row, Binaries::Baseline) {
                Some(baseline) => {
                    out.push((baseline, None));
                    out.push((row, Some(baseline)));
                }
                None => out.push((row, None)),
            },
        }
    }
    out
}

/// `current ÷ baseline` to two decimals, `-` when either is missing or the baseline is 0.
fn times(current: Option<f64>, baseline: Option<f64>) -> String {
    match (current, baseline) {
        (Some(current), Some(baseline)) if baseline > 0.0 => format!("{:.2}", current / baseline),
        _ => "-".to_owned(),
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms}"))
}

/// What one run measured, for its Markdown.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// pgbench's commits/s by profile.
    pub pgbench: Vec<(Profile, f64)>,
    pub saturated: Vec<Saturated>,
    pub steady: Vec<Steady>,
    pub appends: Vec<Append>,
}

impl Results {
    fn pgbench_tps(&self, profile: Profile) -> Option<f64> {
        self.pgbench
            .iter()
            .find(|(p, _)| *p == profile)
            .map(|(_, tps)| *tps)
    }
}

/// The run's Markdown: a heading with when and how it ran, the pgbench floor, one table of the
/// saturated phases, one of the steady ones and one of the event store's appends (each row of the
/// baseline binaries followed by the current one and their ratio), and with HA rows how they
/// compare with the single node's.
pub fn markdown(started_at: &str, command_line: &str, results: &Results) -> String {
    let pgbench_tps = results.pgbench_tps(Profile::Single).unwrap_or(0.0);
    let goal = pgbench_tps / 20.0;
    let mut out = String::new();
    let _ = writeln!(out, "### {started_at}: `{command_line}`\n");
    let _ = writeln!(
        out,
        "pgbench baseline: {pgbench_tps:.0} single-row commits/s, so the goal is ≥ {goal:.0} orders/s end to end."
    );
    let compared = results
        .saturated
        .iter()
        .any(|row| row.binaries == Binaries::Baseline)
        || results
            .steady
            .iter()
            .any(|row| row.binaries == Binaries::Baseline)
        || results
            .appends
            .iter()
            .any(|row| row.binaries == Binaries::Baseline);
    if compared {
        out.push_str(
            "\nThe steps ran with the baseline binaries (`--baseline-bin`) and the current ones in the \
             same run (saturated and steady on one PostgreSQL and nats-server, baseline first, \
             or first in odd rounds only with `--rounds`; \
             append on a fresh stack for each, current first); `current ÷ baseline` above 1 is more \
             of the figure (better for orders/s and appends/s, worse for CPU, commits and \
             latency).\n",
        );
    }
    if !results.saturated.is_empty() {
        saturated_table(&mut out, &results.saturated, goal);
    }
    if !results.steady.is_empty() {
        steady_table(&mut out, &results.steady);
    }
    out.push_str(&rounds_summary(results));
    if !results.appends.is_empty() {
        append_table(&mut out, &results.appends, pgbench_tps);
    }
    if let Some(ha_tps) = results.pgbench_tps(Profile::Ha) {
        out.push_str(&ha_beside_single(
            pgbench_tps,
            ha_tps,
            &results.saturated,
            &results.steady,
        ));
    }
    out
}

fn saturated_table(out: &mut String, rows: &[Saturated], goal: f64) {
    out.push_str(
        "\n| PostgreSQL | run | binaries | orders final | orders/s | ÷ goal | POST/s | CPU ms/order (all) | by process | commits/order | rollbacks/order | machine busy | switches/order (all) | by process |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let rounds = rows.iter().map(|row| row.round).max().unwrap_or(1);
    let rows = paired(
        rows,
        |row| row.binaries,
        |a, b| a.profile == b.profile && a.name == b.name && a.round == b.round,
    );
    for (row, baseline) in rows {
        let name = in_round(&row.name, row.round, rounds);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {:.2} | {:.3} | {:.0}% of 200% | {:.0} | {} |",
            row.profile,
            name,
            row.binaries,
            row.finals,
            row.orders_per_s(),
            ratio(row.orders_per_s(), goal),
            row.posts_per_s,
            row.cpu_ms_per_order_total(),
            by_process(&row.cpu_ms_per_order, 2),
            row.commits_per_order(),
            ratio(row.rollbacks as f64, row.finals as f64),
            row.busy_pct,
            total(&row.switches_per_order),
            by_process(&row.switches_per_order, 0),
        );
        if let Some(base) = baseline {
            let _ = writeln!(
                out,
                "| {} | {} | **{RATIO}** | | **{}** | | {} | **{}** | | {} | | | {} | |",
                row.profile,
                name,
                times(Some(row.orders_per_s()), Some(base.orders_per_s())),
                times(Some(row.posts_per_s), Some(base.posts_per_s)),
                times(
                    Some(row.cpu_ms_per_order_total()),
                    Some(base.cpu_ms_per_order_total())
                ),
                times(
                    Some(row.commits_per_order()),
                    Some(base.commits_per_order())
                ),
                times(
                    Some(total(&row.switches_per_order)),
                    Some(total(&base.switches_per_order))
                ),
            );
        }
    }
}

fn steady_table(out: &mut String, rows: &[Steady]) {
    out.push_str(
        "\n| PostgreSQL | steady rate | binaries | accepted | errors | not final | final seen by | p50 ms | p95 ms | p99 ms | max ms | CPU ms/order (all) | by process | switches/order (all) | by process |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let rounds = rows.iter().map(|row| row.round).max().unwrap_or(1);
    let rows = paired(
        rows,
        |row| row.binaries,
        |a, b| a.profile == b.profile && a.rate == b.rate && a.round == b.round,
    );
    for (row, baseline) in rows {
        let rate = in_round(&format!("{}/s", row.rate), row.round, rounds);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.0} | {} |",
            row.profile,
            rate,
            row.binaries,
            row.accepted,
            row.errors,
            row.not_final,
            row.followed_by,
            millis(row.p50_ms),
            millis(row.p95_ms),
            millis(row.p99_ms),
            millis(row.max_ms),
            total(&row.cpu_ms_per_order),
            by_process(&row.cpu_ms_per_order, 2),
            total(&row.switches_per_order),
            by_process(&row.switches_per_order, 0),
        );
        if let Some(base) = baseline {
            let _ = writeln!(
                out,
                "| {} | {} | **{RATIO}** | | | | | {} | {} | **{}** | {} | {} | | {} | |",
                row.profile,
                rate,
                times(row.p50_ms, base.p50_ms),
                times(row.p95_ms, base.p95_ms),
                times(row.p99_ms, base.p99_ms),
                times(row.max_ms, base.max_ms),
                times(
                    Some(total(&row.cpu_ms_per_order)),
                    Some(total(&base.cpu_ms_per_order))
                ),
                times(
                    Some(total(&row.switches_per_order)),
                    Some(total(&base.switches_per_order))
                ),
            );
        }
    }
}

/// A step's label, with its round when the run had more than one.
pub(super) fn in_round(label: &str, round: u32, rounds: u32) -> String {
    if rounds > 1 {
        format!("{label}, round {round}")
    } else {
        label.to_owned()
    }
}

/// The single node's current rows, each with the baseline row it is compared with (`same`).
fn compared<T>(
    rows: &[T],
    kind: impl Fn(&T) -> (Profile, Binaries),
    same: impl Fn(&T, &T) -> bool,
) -> Vec<(&T, &T)> {
    paired(
        rows,
        |row| kind(row).1,
        |a, b| kind(a).0 == Profile::Single && kind(b).0 == Profile::Single && same(a, b),
    )
    .into_iter()
    .filter_map(|(row, baseline)| baseline.map(|baseline| (row, baseline)))
    .collect()
}

/// One line per figure of a step measured in several rounds: current ÷ baseline in each round,
/// their geometric mean, and in how many rounds the current set did better.
fn rounds_summary(results: &Results) -> String {
    let mut out = String::new();
    let saturated = compared(
        &results.saturated,
        |row| (row.profile, row.binaries),
        |a, b| a.name == b.name && a.round == b.round,
    );
    if saturated.len() > 1 {
        out.push_str(&round_line(
            "saturated, CPU ms/order",
            saturated.iter().map(|(current, base)| {
                (
                    current.cpu_ms_per_order_total(),
                    base.cpu_ms_per_order_total(),
                )
            }),
            Better::Lower,
        ));
        out.push_str(&round_line(
            "saturated, orders/s",
            saturated
                .iter()
                .map(|(current, base)| (current.orders_per_s(), base.orders_per_s())),
            Better::Higher,
        ));
    }
    let mut rates: Vec<f64> = results.steady.iter().map(|row| row.rate).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    for rate in rates {
        let steady = compared(
            &results.steady,
            |row| (row.profile, row.binaries),
            |a, b| a.rate == rate && b.rate == rate && a.round == b.round,
        );
        if steady.len() < 2 {
            continue;
        }
        out.push_str(&round_line(
            &format!("{rate}/s, CPU ms/order"),
            steady.iter().map(|(current, base)| {
                (
                    total(&current.cpu_ms_per_order),
                    total(&base.cpu_ms_per_order),
                )
            }),
            Better::Lower,
        ));
        out.push_str(&round_line(
            &format!("{rate}/s, p99 ms"),
            steady
                .iter()
                .filter_map(|(current, base)| current.p99_ms.zip(base.p99_ms)),
            Better::Lower,
        ));
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "\nCurrent ÷ baseline by round (odd rounds measured the baseline first, even ones the current set):\n\n{out}"
    )
}

/// Which way a figure is better.
#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
}

/// `- what: 0.69, 0.81 (geometric mean 0.75); better in 2 of 2 rounds` from (current, baseline)
/// pairs; pairs with a zero are left out. A ratio that prints as 1.00 is even, not better.
fn round_line(what: &str, pairs: impl Iterator<Item = (f64, f64)>, better: Better) -> String {
    let ratios: Vec<f64> = pairs
        .filter(|(current, base)| *current > 0.0 && *base > 0.0)
        .map(|(current, base)| current / base)
        .collect();
    if ratios.is_empty() {
        return String::new();
    }
    let mean = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    let wins = ratios
        .iter()
        .map(|r| (r * 100.0).round() / 100.0)
        .filter(|r| match better {
            Better::Lower => *r < 1.0,
            Better::Higher => *r > 1.0,
        })
        .count();
    let listed = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "- {what}: {listed} (geometric mean {mean:.2}); better in {wins} of {} rounds\n",
        ratios.len()
    )
}

/// The sum of a by-process figure.
fn total(values: &BTreeMap<String, f64>) -> f64 {
    values.values().sum()
}

/// `name value, …`, the largest first, with `decimals` digits.
fn by_process(values: &BTreeMap<String, f64>, decimals: usize) -> String {
    let mut sorted: Vec<(&String, &f64)> = values.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(a.1));
    sorted
        .iter()
        .map(|(name, value)| format!("{name} {value:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn append_table(out: &mut String, rows: &[Append], pgbench_tps: f64) {
    out.push_str(
        "\nThe event store alone (single PostgreSQL; ordersvc and the workers stopped): closed-loop \
         gRPC CreateEvent clients, chains of 10 events per aggregate; CPU of the servers per 1000 \
         appends; the outbox when the clients stopped and how long the relay took to empty it.\n\n\
         | clients | binaries | appends/s | ÷ pgbench | p50 ms | p99 ms | max ms | errors | CPU ms/1000 appends (all) | by process | commits/append | outbox at end | emptied in ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (row, baseline) in paired(rows, |row| row.binaries, |a, b| a.clients == b.clients) {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {} | {} | {} | {} | {:.1} | {} | {:.3} | {} | {:.0} |",
            row.clients,
            row.binaries,
            row.appends_per_s(),
            ratio(row.appends_per_s(), pgbench_tps),
            millis(row.p50_ms),
            millis(row.p99_ms),
            millis(row.max_ms),
            row.errors,
            row.cpu_ms_per_1000_total(),
            by_process(&row.cpu_ms_per_1000, 1),
            row.commits_per_append(),
            row.outbox_at_end,
            row.drain_ms,
        );
        if let Some(base) = baseline {
            let _ = writeln!(
                out,
                "| {} | **{RATIO}** | **{}** | | {} | **{}** | {} | | **{}** | | {} | | {} |",
                row.clients,
                times(Some(row.appends_per_s()), Some(base.appends_per_s())),
                times(row.p50_ms, base.p50_ms),
                times(row.p99_ms, base.p99_ms),
                times(row.max_ms, base.max_ms),
                times(
                    Some(row.cpu_ms_per_1000_total()),
                    Some(base.cpu_ms_per_1000_total())
                ),
                times(
                    Some(row.commits_per_append()),
                    Some(base.commits_per_append())
                ),
                times(Some(row.drain_ms), Some(base.drain_ms)),
            );
        }
    }
    for row in rows.iter().filter(|row| row.first_error.is_some()) {
        let _ = writeln!(
            out,
            "\n{} clients, {} binaries: first error: {}",
            row.clients,
            row.binaries,
            row.first_error.as_deref().unwrap_or_default()
        );
    }
}

/// The HA profile against the single node (its rows of the current binaries: the HA steps run
/// only those): pgbench, orders/s, where the extra CPU goes, latency.
fn ha_beside_single(
    single_tps: f64,
    ha_tps: f64,
    saturated: &[Saturated],
    steady: &[Steady],
) -> String {
    let mut out = format!(
        "\nHA (3 nodes under Patroni, one synchronous standby, etcd ×3, HAProxy) beside the single \
         node; HA commits/order are the leader's (through HAProxy): replicas replay its WAL and \
         commit nothing of their own.\n\n\
         - pgbench commits/s: single {single_tps:.0}, HA {ha_tps:.0} (HA ÷ single = {:.2})\n",
        ratio(ha_tps, single_tps)
    );
    for ha in saturated.iter().filter(|row| row.profile == Profile::Ha) {
        let Some(single) = saturated.iter().find(|row| {
            row.profile == Profile::Single
                && row.binaries == Binaries::Current
                && row.name == ha.name
        }) else {
            continue;
        };
        let _ = writeln!(
            out,
            "- HA {} orders/s ÷ single: {:.0} ÷ {:.0} = {:.2} (goal ≥ 0.5)",
            ha.name,
            ha.orders_per_s(),
            single.orders_per_s(),
            ratio(ha.orders_per_s(), single.orders_per_s()),
        );
        let extra = cpu_difference(single, ha)
            .iter()
            .map(|(group, ms)| format!("{group} {ms:+.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "- {} CPU ms/order HA − single: {:+.2} ({extra})",
            ha.name,
            ha.cpu_ms_per_order_total() - single.cpu_ms_per_order_total(),
        );
    }
    for ha in steady.iter().filter(|row| row.profile == Profile::Ha) {
        if let Some(single) = steady.iter().find(|row| {
            row.profile == Profile::Single
                && row.binaries == Binaries::Current
                && row.rate == ha.rate
        }) {
            let _ = writeln!(
                out,
                "- steady {}/s p99 ms: single {}, HA {}",
                ha.rate,
                millis(single.p99_ms),
                millis(ha.p99_ms),
            );
        }
    }
    out
}

/// CPU ms/order of `ha` minus `single` by process, a group (`postgresql ×3`) against its single
/// counterpart (`postgresql`), largest difference first.
fn cpu_difference(single: &Saturated, ha: &Saturated) -> Vec<(String, f64)> {
    let base = |name: &str| name.split(" ×").next().unwrap_or(name).to_owned();
    let mut by_group: BTreeMap<String, (String, f64)> = BTreeMap::new();
    for (name, ms) in &ha.cpu_ms_per_order {
        by_group.insert(base(name), (name.clone(), *ms));
    }
    for (name, ms) in &single.cpu_ms_per_order {
        by_group
            .entry(base(name))
            .or_insert_with(|| (name.clone(), 0.0))
            .1 -= ms;
    }
    let mut differences: Vec<(String, f64)> = by_group.into_values().collect();
    differences.sort_by(|a, b| b.1.total_cmp(&a.1));
    differences
}

/// BENCHMARKS.md with `run` added as the newest entry under its `## Runs` heading (made when
/// missing).
pub fn add_run(document: &str, run: &str) -> String {
    let (head, rest) = match document.split_once("\n## Runs\n") {
        Some((head, rest)) => (head.to_owned(), rest.trim_start_matches('\n')),
        None => (document.trim_end_matches('\n').to_owned(), ""),
    };
    format!("{head}\n## Runs\n\n{run}\n{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saturated() -> Saturated {
        Saturated {
            profile: Profile::Single,
            binaries: Binaries::Current,
            round: 1,
            name: "saturated".to_owned(),
            accepted: 1000,
            refused: 0,
            posts_per_s: 500.0,
            finals: 1000,
            seconds: 4.0,
            cpu_ms_per_order: BTreeMap::from([
                ("ordersvc".to_owned(), 0.5),
                ("postgresql".to_owned(), 1.5),
            ]),
            switches_per_order: BTreeMap::from([
                ("eventstore".to_owned(), 4.0),
                ("postgresql".to_owned(), 6.0),
            ]),
            commits: 570,
            rollbacks: 0,
            busy_pct: 150.0,
        }
    }

    fn steady(profile: Profile, binaries: Binaries, p99_ms: Option<f64>) -> Steady {
        Steady {
            profile,
            binaries,
            round: 1,
            rate: 100.0,
            accepted: 2000,
            errors: 0,
            not_final: 0,
            followed_by: "notices".to_owned(),
            cpu_ms_per_order: BTreeMap::from([
                ("postgresql".to_owned(), 4.25),
                ("nats-server".to_owned(), 2.0),
            ]),
            switches_per_order: BTreeMap::from([
                ("postgresql".to_owned(), 55.0),
                ("nats-server".to_owned(), 61.0),
            ]),
            p50_ms: Some(75.0),
            p95_ms: None,
            p99_ms,
            max_ms: Some(400.5),
        }
    }

    fn append(binaries: Binaries, clients: usize, appends: u64) -> Append {
        Append {
            binaries,
            clients,
            appends,
            errors: 0,
            first_error: None,
            seconds: 10.0,
            p50_ms: Some(2.0),
            p99_ms: Some(8.0),
            max_ms: Some(20.0),
            cpu_ms_per_1000: BTreeMap::from([
                ("eventstore".to_owned(), 100.0),
                ("postgresql".to_owned(), 150.0),
                ("nats-server".to_owned(), 10.0),
            ]),
            commits: i64::try_from(appends / 4).unwrap_or(0),
            outbox_at_end: 12,
            drain_ms: 40.0,
        }
    }

    #[test]
    fn each_round_is_compared_with_its_own_baseline_and_summed_up_by_round() {
        // Two rounds; the current set used 0.8× and 0.9× of the baseline's CPU saturated, and
        // its p99 at 100/s was lower in round 1 and higher in round 2.
        let cpu = |ms: f64| BTreeMap::from([("postgresql".to_owned(), ms)]);
        let mut saturated_rows = Vec::new();
        let mut steady_rows = Vec::new();
        for (round, base_ms, current_ms, base_p99, current_p99) in
            [(1, 2.0, 1.6, 50.0, 40.0), (2, 1.0, 0.9, 30.0, 60.0)]
        {
            for (binaries, ms, p99) in [
                (Binaries::Baseline, base_ms, base_p99),
                (Binaries::Current, current_ms, current_p99),
            ] {
                saturated_rows.push(Saturated {
                    binaries,
                    round,
                    cpu_ms_per_order: cpu(ms),
                    ..saturated()
                });
                steady_rows.push(Steady {
                    round,
                    cpu_ms_per_order: cpu(ms * 4.0),
                    ..steady(Profile::Single, binaries, Some(p99))
                });
            }
        }
        let results = Results {
            pgbench: vec![(Profile::Single, 7200.0)],
            saturated: saturated_rows,
            steady: steady_rows,
            appends: Vec::new(),
        };
        let text = markdown("2026-12-08 03:00 UTC", "scripts/bench --rounds 2", &results);

        // Expected: each round's rows are labelled and paired within the round, never across.
        assert!(
            text.contains("| single | saturated, round 1 | **current ÷ baseline** | | **1.00** | | 1.00 | **0.80** |"),
            "{text}"
        );
        assert!(
            text.contains("| single | saturated, round 2 | **current ÷ baseline** | | **1.00** | | 1.00 | **0.90** |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| single | 100/s, round 2 | **current ÷ baseline** | | | | | 1.00 | - | **2.00** |"
            ),
            "{text}"
        );
        // Expected: one line per figure, with the geometric mean and the rounds won.
        assert!(
            text.contains("- saturated, CPU ms/order: 0.80, 0.90 (geometric mean 0.85); better in 2 of 2 rounds"),
            "{text}"
        );
        assert!(
            text.contains(
                "- 100/s, p99 ms: 0.80, 2.00 (geometric mean 1.26); better in 1 of 2 rounds"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "- saturated, orders/s: 1.00, 1.00 (geometric mean 1.00); better in 0 of 2 rounds"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_ratio_that_prints_as_one_is_even() {
        // 1.75 against 1.76 is 0.994: printed 0.99, better; 1.759 against 1.76 prints 1.00: even.
        assert_eq!(
            round_line(
                "cpu",
                [(1.75, 1.76), (1.759, 1.76)].into_iter(),
                Better::Lower
            ),
            "- cpu: 0.99, 1.00 (geometric mean 1.00); better in 1 of 2 rounds\n"
        );
        assert_eq!(
            round_line("orders/s", [(0.0, 1.0)].into_iter(), Better::Higher),
            "",
            "a pair with a zero is left out"
        );
    }

    #[test]
    fn one_round_prints_no_round_labels_and_no_summary() {
        let results = Results {
            pgbench: vec![(Profile::Single, 7200.0)],
            saturated: vec![
                Saturated {
                    binaries: Binaries::Baseline,
                    ..saturated()
                },
                saturated(),
            ],
            steady: Vec::new(),
            appends: Vec::new(),
        };
        let text = markdown("2026-12-08 03:00 UTC", "scripts/bench", &results);
        assert!(
            !text.contains(", round ") && !text.contains("by round"),
            "{text}"
        );
        assert!(
            text.contains("| single | saturated | **current ÷ baseline** |"),
            "{text}"
        );
    }

    #[test]
    fn a_saturated_row_divides_by_final_orders_and_sorts_processes_by_cost() {
        let results = Results {
            pgbench: vec![(Profile::Single, 7200.0)],
            saturated: vec![saturated()],
            steady: vec![steady(Profile::Single, Binaries::Current, Some(258.0))],
            appends: Vec::new(),
        };
        let text = markdown("2026-12-07 03:00 UTC", "scripts/bench", &results);
        assert!(text.contains("the goal is ≥ 360 orders/s"), "{text}");
        assert!(!text.contains("HA"), "{text}");
        assert!(
            text.contains("| single | saturated | current | 1000 | 250 | 0.69 | 500 | 2.00 | postgresql 1.50, ordersvc 0.50 | 0.57 | 0.000 | 150% of 200% | 10 | postgresql 6, eventstore 4 |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| single | 100/s | current | 2000 | 0 | 0 | notices | 75 | - | 258 | 400.5 | 6.25 | postgresql 4.25, nats-server 2.00 | 116 | nats-server 61, postgresql 55 |"
            ),
            "{text}"
        );
        // Without a baseline, no ratios and no word of one; without appends, no append table.
        assert!(!text.contains(RATIO), "{text}");
        assert!(!text.contains("event store alone"), "{text}");
    }

    #[test]
    fn each_baseline_row_is_followed_by_the_current_one_and_their_ratio() {
        let baseline = Saturated {
            binaries: Binaries::Baseline,
            seconds: 5.0,
            cpu_ms_per_order: BTreeMap::from([("postgresql".to_owned(), 4.0)]),
            ..saturated()
        };
        let results = Results {
            pgbench: vec![(Profile::Single, 8000.0)],
            // Measured baseline first, as the bench runs them; printed side by side.
            saturated: vec![baseline, saturated()],
            steady: vec![
                steady(Profile::Single, Binaries::Baseline, Some(200.0)),
                Steady {
                    rate: 500.0,
                    ..steady(Profile::Single, Binaries::Baseline, None)
                },
                steady(Profile::Single, Binaries::Current, Some(258.0)),
                Steady {
                    rate: 500.0,
                    ..steady(Profile::Single, Binaries::Current, Some(90.0))
                },
            ],
            appends: vec![
                append(Binaries::Current, 16, 20_000),
                append(Binaries::Baseline, 16, 16_000),
            ],
        };
        let text = markdown("2026-12-07 03:00 UTC", "scripts/bench", &results);
        let lines: Vec<&str> = text.lines().collect();
        let at = |prefix: &str| {
            lines
                .iter()
                .position(|line| line.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line starts with {prefix:?} in\n{text}"))
        };
        let base = at("| single | saturated | baseline | 1000 | 200 |");
        assert_eq!(
            at("| single | saturated | current | 1000 | 250 |"),
            base + 1
        );
        // Orders/s 250 ÷ 200, POST/s equal, CPU 2.0 ÷ 4.0, commits per order equal.
        assert_eq!(
            lines[base + 2],
            "| single | saturated | **current ÷ baseline** | | **1.25** | | 1.00 | **0.50** | | 1.00 | | | 1.00 | |"
        );
        let base = at("| single | 100/s | baseline |");
        assert_eq!(at("| single | 100/s | current |"), base + 1);
        assert_eq!(
            lines[base + 2],
            "| single | 100/s | **current ÷ baseline** | | | | | 1.00 | - | **1.29** | 1.00 | 1.00 | | 1.00 | |"
        );
        // A missing percentile on either side gives no ratio.
        assert!(
            text.contains(
                "| single | 500/s | **current ÷ baseline** | | | | | 1.00 | - | **-** | 1.00 | 1.00 | | 1.00 | |"
            ),
            "{text}"
        );
        let base = at("| 16 | baseline | 1600 | 0.20 |");
        assert_eq!(at("| 16 | current | 2000 | 0.25 |"), base + 1);
        assert_eq!(
            lines[base + 2],
            "| 16 | **current ÷ baseline** | **1.25** | | 1.00 | **1.00** | 1.00 | | **1.00** | | 1.00 | | 1.00 |"
        );
        assert!(text.contains("`current ÷ baseline` above 1"), "{text}");
    }

    #[test]
    fn an_append_row_counts_per_append_and_names_its_first_error() {
        let row = Append {
            errors: 3,
            first_error: Some("Unavailable: the database is down".to_owned()),
            ..append(Binaries::Current, 64, 40_000)
        };
        assert_eq!(row.appends_per_s(), 4000.0);
        assert_eq!(row.cpu_ms_per_1000_total(), 260.0);
        assert_eq!(row.commits_per_append(), 0.25);
        let results = Results {
            pgbench: vec![(Profile::Single, 16_000.0)],
            appends: vec![row],
            ..Results::default()
        };
        let text = markdown(
            "2026-12-07 03:00 UTC",
            "scripts/bench --only append",
            &results,
        );
        assert!(
            text.contains(
                "| 64 | current | 4000 | 0.25 | 2 | 8 | 20 | 3 | 260.0 | postgresql 150.0, eventstore 100.0, nats-server 10.0 | 0.250 | 12 | 40 |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "64 clients, current binaries: first error: Unavailable: the database is down"
            ),
            "{text}"
        );
        // Only the steps that ran have a table.
        assert!(!text.contains("orders final"), "{text}");
        assert!(!text.contains("steady rate"), "{text}");
    }

    #[test]
    fn ha_rows_are_labelled_and_compared_with_the_single_row_of_the_same_name() {
        let ha = Saturated {
            profile: Profile::Ha,
            seconds: 5.0,
            cpu_ms_per_order: BTreeMap::from([
                ("ordersvc".to_owned(), 0.5),
                ("postgresql ×3".to_owned(), 2.5),
                ("patroni ×3".to_owned(), 0.25),
                ("haproxy".to_owned(), 0.5),
            ]),
            ..saturated()
        };
        let span_export = Saturated {
            name: "saturated, span export on".to_owned(),
            seconds: 2.0,
            ..saturated()
        };
        // A baseline row of the same name is not what HA is compared with.
        let baseline = Saturated {
            binaries: Binaries::Baseline,
            seconds: 1.0,
            ..saturated()
        };
        let results = Results {
            pgbench: vec![(Profile::Single, 7200.0), (Profile::Ha, 1800.0)],
            saturated: vec![baseline, saturated(), span_export, ha],
            steady: vec![
                steady(Profile::Single, Binaries::Baseline, Some(100.0)),
                steady(Profile::Single, Binaries::Current, Some(258.0)),
                steady(Profile::Ha, Binaries::Current, Some(300.0)),
            ],
            appends: Vec::new(),
        };
        let text = markdown("2026-12-07 03:00 UTC", "scripts/bench --ha", &results);
        assert!(
            text.contains("| HA | saturated | current | 1000 | 200 |"),
            "{text}"
        );
        assert!(text.contains("| HA | 100/s | current | 2000 |"), "{text}");
        assert!(
            text.contains("- pgbench commits/s: single 7200, HA 1800 (HA ÷ single = 0.25)"),
            "{text}"
        );
        // Against "saturated" (250/s), not the span-export row (500/s) nor the baseline (1000/s).
        assert!(
            text.contains("- HA saturated orders/s ÷ single: 200 ÷ 250 = 0.80 (goal ≥ 0.5)"),
            "{text}"
        );
        assert!(
            text.contains(
                "- saturated CPU ms/order HA − single: +1.75 \
                 (postgresql ×3 +1.00, haproxy +0.50, patroni ×3 +0.25, ordersvc +0.00)"
            ),
            "{text}"
        );
        assert!(
            text.contains("- steady 100/s p99 ms: single 258, HA 300"),
            "{text}"
        );
        assert_eq!(text.matches("orders/s ÷ single").count(), 1, "{text}");
    }

    #[test]
    fn a_ratio_needs_both_figures_and_a_baseline_above_zero() {
        assert_eq!(times(Some(3.0), Some(2.0)), "1.50");
        assert_eq!(times(Some(3.0), Some(0.0)), "-");
        assert_eq!(times(None, Some(2.0)), "-");
        assert_eq!(times(Some(3.0), None), "-");
    }

    #[test]
    fn a_run_goes_first_under_runs_and_the_heading_is_made_once() {
        let first = add_run("# Benchmarks\n\nIntro.\n", "### one\n");
        assert_eq!(first, "# Benchmarks\n\nIntro.\n## Runs\n\n### one\n\n");
        let second = add_run(&first, "### two\n");
        assert_eq!(
            second,
            "# Benchmarks\n\nIntro.\n## Runs\n\n### two\n\n### one\n\n"
        );
    }
}
