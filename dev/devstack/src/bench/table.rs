//! The rows a benchmark run measures and the Markdown it prints (and adds to BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use super::stack::Profile;

/// A saturated phase: as many orders as the pipeline takes, then until all are final.
#[derive(Debug, Clone, PartialEq)]
pub struct Saturated {
    pub profile: Profile,
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
            ratio(self.commits as f64, self.finals as f64),
            ratio(self.rollbacks as f64, self.finals as f64),
            self.busy_pct,
        )
    }
}

/// A steady-rate phase: POST → final latencies as `orderctl load` measured them.
#[derive(Debug, Clone, PartialEq)]
pub struct Steady {
    pub profile: Profile,
    pub rate: f64,
    pub accepted: u64,
    pub errors: u64,
    pub not_final: u64,
    pub followed_by: String,
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

/// The run's Markdown: a heading with when and how it ran, the pgbench floor, one table of the
/// saturated phases and one of the steady ones, and with HA rows how they compare with the single
/// node's.
pub fn markdown(
    started_at: &str,
    command_line: &str,
    pgbench: &[(Profile, f64)],
    saturated: &[Saturated],
    steady: &[Steady],
) -> String {
    let tps = |profile: Profile| {
        pgbench
            .iter()
            .find(|(p, _)| *p == profile)
            .map(|(_, tps)| *tps)
    };
    let pgbench_tps = tps(Profile::Single).unwrap_or(0.0);
    let goal = pgbench_tps / 20.0;
    let mut out = String::new();
    let _ = writeln!(out, "### {started_at}: `{command_line}`\n");
    let _ = writeln!(
        out,
        "pgbench baseline: {pgbench_tps:.0} single-row commits/s, so the goal is ≥ {goal:.0} orders/s end to end.\n"
    );
    out.push_str(
        "| PostgreSQL | run | orders final | orders/s | ÷ goal | POST/s | CPU ms/order (all) | by process | commits/order | rollbacks/order | machine busy |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in saturated {
        let mut by_process: Vec<(&String, &f64)> = row.cpu_ms_per_order.iter().collect();
        by_process.sort_by(|a, b| b.1.total_cmp(a.1));
        let by_process = by_process
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {:.2} | {:.3} | {:.0}% of 200% |",
            row.profile,
            row.name,
            row.finals,
            row.orders_per_s(),
            ratio(row.orders_per_s(), goal),
            row.posts_per_s,
            row.cpu_ms_per_order_total(),
            by_process,
            ratio(row.commits as f64, row.finals as f64),
            ratio(row.rollbacks as f64, row.finals as f64),
            row.busy_pct,
        );
    }
    out.push_str(
        "\n| PostgreSQL | steady rate | accepted | errors | not final | final seen by | p50 ms | p95 ms | p99 ms | max ms |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in steady {
        let _ = writeln!(
            out,
            "| {} | {}/s | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.profile,
            row.rate,
            row.accepted,
            row.errors,
            row.not_final,
            row.followed_by,
            millis(row.p50_ms),
            millis(row.p95_ms),
            millis(row.p99_ms),
            millis(row.max_ms),
        );
    }
    if let Some(ha_tps) = tps(Profile::Ha) {
        out.push_str(&ha_beside_single(pgbench_tps, ha_tps, saturated, steady));
    }
    out
}

/// The HA profile against the single node: pgbench, orders/s, where the extra CPU goes, latency.
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
        let Some(single) = saturated
            .iter()
            .find(|row| row.profile == Profile::Single && row.name == ha.name)
        else {
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
        if let Some(single) = steady
            .iter()
            .find(|row| row.profile == Profile::Single && row.rate == ha.rate)
        {
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
            commits: 570,
            rollbacks: 0,
            busy_pct: 150.0,
        }
    }

    #[test]
    fn a_saturated_row_divides_by_final_orders_and_sorts_processes_by_cost() {
        let steady = Steady {
            profile: Profile::Single,
            rate: 100.0,
            accepted: 2000,
            errors: 0,
            not_final: 0,
            followed_by: "notices".to_owned(),
            p50_ms: Some(75.0),
            p95_ms: None,
            p99_ms: Some(258.0),
            max_ms: Some(400.5),
        };
        let text = markdown(
            "2026-12-07 03:00 UTC",
            "scripts/bench",
            &[(Profile::Single, 7200.0)],
            &[saturated()],
            &[steady],
        );
        assert!(text.contains("the goal is ≥ 360 orders/s"), "{text}");
        assert!(!text.contains("HA"), "{text}");
        assert!(
            text.contains("| single | saturated | 1000 | 250 | 0.69 | 500 | 2.00 | postgresql 1.50, ordersvc 0.50 | 0.57 | 0.000 | 150% of 200% |"),
            "{text}"
        );
        assert!(
            text.contains("| single | 100/s | 2000 | 0 | 0 | notices | 75 | - | 258 | 400.5 |"),
            "{text}"
        );
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
        let steady = |profile, p99_ms| Steady {
            profile,
            rate: 100.0,
            accepted: 2000,
            errors: 0,
            not_final: 0,
            followed_by: "notices".to_owned(),
            p50_ms: Some(75.0),
            p95_ms: None,
            p99_ms,
            max_ms: None,
        };
        let text = markdown(
            "2026-12-07 03:00 UTC",
            "scripts/bench --ha",
            &[(Profile::Single, 7200.0), (Profile::Ha, 1800.0)],
            &[saturated(), span_export, ha],
            &[
                steady(Profile::Single, Some(258.0)),
                steady(Profile::Ha, Some(300.0)),
            ],
        );
        assert!(text.contains("| HA | saturated | 1000 | 200 |"), "{text}");
        assert!(text.contains("| HA | 100/s | 2000 |"), "{text}");
        assert!(
            text.contains("- pgbench commits/s: single 7200, HA 1800 (HA ÷ single = 0.25)"),
            "{text}"
        );
        // Against "saturated" (250/s), not the span-export row (500/s).
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
