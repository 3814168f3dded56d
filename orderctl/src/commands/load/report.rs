//! What a load run measured, and the report made of it. Pure: no clock, no I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Everything a run records; [`Report::new`] turns it into numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// Orders the run tried to place (one per `Idempotency-Key`, however many attempts).
    pub sent: u64,
    /// Attempts beyond the first, after a network error or timeout.
    pub retries: u64,
    /// Orders the API did not accept, by the last attempt's error kind.
    pub errors: BTreeMap<String, u64>,
    /// Per accepted order: first attempt sent → 201 received.
    pub post_latencies: Vec<Duration>,
    /// Per order seen final: first attempt sent → final status read, by status.
    pub final_latencies: BTreeMap<String, Vec<Duration>>,
    /// Accepted orders not seen final before the run gave up waiting.
    pub not_final: u64,
    /// Run start → last POST answered (accepted or not).
    pub post_window: Duration,
    /// Run start → last order seen final.
    pub final_window: Duration,
    /// Final statuses came from querymodelworker's notices (true) or from re-reading the API.
    pub followed_by_notices: bool,
}

impl Samples {
    pub fn accepted(&self) -> u64 {
        self.post_latencies.len() as u64
    }

    pub fn record_error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn record_final(&mut self, status: &str, latency: Duration) {
        self.final_latencies
            .entry(status.to_owned())
            .or_default()
            .push(latency);
    }
}

/// Milliseconds at the usual percentiles; `None` without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        let histogram = histogram(samples);
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0);
        Latency {
            p50_ms: ms(percentile(&histogram, 50)),
            p95_ms: ms(percentile(&histogram, 95)),
            p99_ms: ms(percentile(&histogram, 99)),
            max_ms: ms(percentile(&histogram, 100)),
        }
    }
}

/// The samples in microseconds, to four significant digits: a figure in milliseconds with one
/// decimal is the sample's up to a second (a histogram grows as it needs).
pub fn histogram(samples: &[Duration]) -> Histogram<u64> {
    let mut histogram =
        Histogram::new(4).expect("four significant digits are in hdrhistogram's range");
    for sample in samples {
        let micros = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        // `record` grows the histogram; `saturating_record` alone would clamp to its first size.
        if histogram.record(micros).is_err() {
            histogram.saturating_record(micros);
        }
    }
    histogram
}

/// Nearest-rank percentile: the smallest sample that at least `percent`% of the samples do not
/// exceed, as hdrhistogram keeps it (its bucket's highest value: at most 0.01 % above the sample),
/// so p50 ≤ p95 ≤ p99 ≤ max holds. `None` without samples.
pub fn percentile(histogram: &Histogram<u64>, percent: u32) -> Option<Duration> {
    (!histogram.is_empty()).then(|| {
        let quantile = f64::from(percent.min(100)) / 100.0;
        Duration::from_micros(histogram.value_at_quantile(quantile))
    })
}

/// One phase: how many, how fast, how long each took.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Phase {
    pub count: u64,
    /// `count` over the phase's window (run start → its last event).
    pub per_second: f64,
    pub latency: Latency,
}

impl Phase {
    fn new(latencies: &[Duration], window: Duration) -> Phase {
        let count = latencies.len() as u64;
        let secs = window.as_secs_f64();
        let per_second = if secs > 0.0 {
            (count as f64 / secs * 10.0).round() / 10.0
        } else {
            0.0
        };
        Phase {
            count,
            per_second,
            latency: Latency::of(latencies),
        }
    }
}

/// The end-of-run report (printed as text, or as JSON with `--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub sent: u64,
    pub accepted: u64,
    pub errors: BTreeMap<String, u64>,
    pub final_by_status: BTreeMap<String, u64>,
    pub not_final: u64,
    pub retries: u64,
    /// How the final statuses were learnt: `notices` (querymodelworker's, costing the pipeline
    /// nothing) or `api` (re-reading the order with `min_version`, which loads what it measures).
    pub followed_by: String,
    /// POST: accepted orders, accepted per second, time to the 201.
    pub post: Phase,
    /// POST → final: orders seen final, per second, time from the POST to the final status.
    pub post_to_final: Phase,
}

impl Report {
    pub fn new(samples: &Samples) -> Report {
        let all_final: Vec<Duration> = samples
            .final_latencies
            .values()
            .flatten()
            .copied()
            .collect();
        Report {
            sent: samples.sent,
            accepted: samples.accepted(),
            errors: samples.errors.clone(),
            final_by_status: samples
                .final_latencies
                .iter()
                .map(|(status, latencies)| (status.clone(), latencies.len() as u64))
                .collect(),
            not_final: samples.not_final,
            retries: samples.retries,
            followed_by: if samples.followed_by_notices {
                "notices"
            } else {
                "api"
            }
            .to_owned(),
            post: Phase::new(&samples.post_latencies, samples.post_window),
            post_to_final: Phase::new(&all_final, samples.final_window),
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn final_count(&self) -> u64 {
        self.final_by_status.values().sum()
    }

    /// The invariants of a finished run: every order sent was accepted or failed, every accepted
    /// order ended final or not final, and percentiles are ordered.
    pub fn check(&self) -> Result<(), String> {
        if self.accepted + self.error_count() != self.sent {
            return Err(format!(
                "sent {} but accepted {} + errors {}",
                self.sent,
                self.accepted,
                self.error_count()
            ));
        }
        if self.final_count() + self.not_final != self.accepted {
            return Err(format!(
                "accepted {} but final {} + not final {}",
                self.accepted,
                self.final_count(),
                self.not_final
            ));
        }
        for (name, latency) in [
            ("POST", self.post.latency),
            ("POST → final", self.post_to_final.latency),
        ] {
            let ordered = [
                latency.p50_ms,
                latency.p95_ms,
                latency.p99_ms,
                latency.max_ms,
            ]
            .windows(2)
            .all(|pair| pair[0] <= pair[1]);
            if !ordered {
                return Err(format!("{name} percentiles are not ordered: {latency:?}"));
            }
        }
        Ok(())
    }

    /// The report for a person.
    pub fn render(&self) -> String {
        let list = |counts: &BTreeMap<String, u64>| {
            if counts.is_empty() {
                return String::new();
            }
            let named: Vec<String> = counts
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect();
            format!("  {}", named.join(", "))
        };
        let ms = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let mut out = String::new();
        let _ = writeln!(out, "sent          {}", self.sent);
        let _ = writeln!(out, "accepted      {}", self.accepted);
        let _ = writeln!(
            out,
            "errors        {}{}",
            self.error_count(),
            list(&self.errors)
        );
        let _ = writeln!(
            out,
            "final         {}{}",
            self.final_count(),
            list(&self.final_by_status)
        );
        let _ = writeln!(out, "not final     {}", self.not_final);
        let _ = writeln!(out, "retries       {}", self.retries);
        let _ = writeln!(out, "final seen by {}", self.followed_by);
        let _ = writeln!(
            out,
            "\n{:<14}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "", "orders", "orders/s", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        for (name, phase) in [("POST", &self.post), ("POST → final", &self.post_to_final)] {
            let _ = writeln!(
                out,
                "{name:<14}{:>8}{:>10.1}{:>10}{:>10}{:>10}{:>10}",
                phase.count,
                phase.per_second,
                ms(phase.latency.p50_ms),
                ms(phase.latency.p95_ms),
                ms(phase.latency.p99_ms),
                ms(phase.latency.max_ms),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let at = |samples: &[u64], percent| {
            percentile(&histogram(&ms(samples)), percent).map(|d| d.as_millis())
        };
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(at(&hundred, 50), Some(50));
        assert_eq!(at(&hundred, 95), Some(95));
        assert_eq!(at(&hundred, 99), Some(99));
        assert_eq!(at(&hundred, 100), Some(100));
        assert_eq!(at(&[7], 99), Some(7));
        assert_eq!(at(&[1, 2], 50), Some(1));
        assert_eq!(at(&[], 50), None);
        // Below 2.048 ms a microsecond is kept exactly; above, within 0.1 %.
        let exact = percentile(&histogram(&[Duration::from_micros(1_234)]), 50);
        assert_eq!(exact, Some(Duration::from_micros(1_234)));
    }

    #[test]
    fn latencies_are_taken_unsorted_and_come_out_ordered() {
        let latency = Latency::of(&ms(&[30, 10, 20, 1000, 15]));
        assert_eq!(latency.p50_ms, Some(20.0));
        assert_eq!(latency.p99_ms, Some(1000.0));
        assert_eq!(latency.max_ms, Some(1000.0));
        assert_eq!(Latency::of(&[]), Latency::default());
    }

    fn samples() -> Samples {
        let mut samples = Samples {
            sent: 6,
            retries: 2,
            post_latencies: ms(&[10, 12, 11, 40, 9]),
            not_final: 1,
            post_window: Duration::from_secs(2),
            final_window: Duration::from_secs(4),
            ..Samples::default()
        };
        samples.record_error("HTTP 503".into());
        samples.record_final("Approved", Duration::from_millis(120));
        samples.record_final("Approved", Duration::from_millis(80));
        samples.record_final("Rejected", Duration::from_millis(200));
        samples.record_final("PaymentFailed", Duration::from_millis(60));
        samples
    }

    #[test]
    fn a_report_adds_up_and_rates_are_per_second_of_each_phase() {
        let report = Report::new(&samples());
        assert_eq!(report.sent, 6);
        assert_eq!(report.accepted, 5);
        assert_eq!(report.final_by_status["Approved"], 2);
        assert_eq!(report.final_count(), 4);
        assert_eq!(report.post.per_second, 2.5);
        assert_eq!(report.post_to_final.per_second, 1.0);
        assert_eq!(report.post_to_final.latency.p50_ms, Some(80.0));
        assert_eq!(report.check(), Ok(()));
        let text = report.render();
        assert!(
            text.contains("final         4  Approved 2, PaymentFailed 1, Rejected 1"),
            "{text}"
        );
        assert!(text.contains("errors        1  HTTP 503"), "{text}");
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["post"]["latency"]["p99_ms"], 40.0);
        assert_eq!(json["errors"]["HTTP 503"], 1);
    }

    #[test]
    fn a_report_that_does_not_add_up_fails_its_check() {
        let mut lost_order = samples();
        lost_order.sent = 7;
        assert!(Report::new(&lost_order).check().is_err());
        let mut lost_final = samples();
        lost_final.not_final = 0;
        assert!(Report::new(&lost_final).check().is_err());
    }

    #[test]
    fn an_empty_run_reports_zeros_without_dividing_by_zero() {
        let report = Report::new(&Samples::default());
        assert_eq!(report.check(), Ok(()));
        assert_eq!(report.post.per_second, 0.0);
        assert!(report.render().contains("POST"));
    }
}
