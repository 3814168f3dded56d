//! The rows a benchmark run measures and the Markdown it prints (and adds to BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A saturated phase: as many orders as the pipeline takes, then until all are final.
#[derive(Debug, Clone, PartialEq)]
pub struct Saturated {
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
/// saturated phases and one of the steady ones.
pub fn markdown(
    started_at: &str,
    command_line: &str,
    pgbench_tps: f64,
    saturated: &[Saturated],
    steady: &[Steady],
) -> String {
    let goal = pgbench_tps / 20.0;
    let mut out = String::new();
    let _ = writeln!(out, "### {started_at}: `{command_line}`\n");
    let _ = writeln!(
        out,
        "pgbench baseline: {pgbench_tps:.0} single-row commits/s, so the goal is ≥ {goal:.0} orders/s end to end.\n"
    );
    out.push_str(
        "| run | orders final | orders/s | ÷ goal | POST/s | CPU ms/order (all) | by process | commits/order | rollbacks/order | machine busy |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
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
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {:.2} | {:.3} | {:.0}% of 200% |",
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
        "\n| steady rate | accepted | errors | not final | final seen by | p50 ms | p95 ms | p99 ms | max ms |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for row in steady {
        let _ = writeln!(
            out,
            "| {}/s | {} | {} | {} | {} | {} | {} | {} | {} |",
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
    out
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
            7200.0,
            &[saturated()],
            &[steady],
        );
        assert!(text.contains("the goal is ≥ 360 orders/s"), "{text}");
        assert!(
            text.contains("| saturated | 1000 | 250 | 0.69 | 500 | 2.00 | postgresql 1.50, ordersvc 0.50 | 0.57 | 0.000 | 150% of 200% |"),
            "{text}"
        );
        assert!(
            text.contains("| 100/s | 2000 | 0 | 0 | notices | 75 | - | 258 | 400.5 |"),
            "{text}"
        );
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
