//! The report of a chaos run: figures, faults and invariants, as text or JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::faults::{FaultRecord, Schedule};
use super::invariants::Invariant;
use super::load::LoadStats;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    /// Orders offered per second.
    pub rate: f64,
    pub customers: u32,
    pub schedule: Schedule,
    /// The factor of every time a process stayed down.
    pub down_scale: f64,
    /// The load's planned duration.
    pub planned_seconds: f64,
    /// Starting the servers, bootstrapping and starting the services.
    pub startup_seconds: f64,
    /// From the first order to the last order's last answer.
    pub load_seconds: f64,
    /// From the end of the load until the pipeline was idle (or the wait ended).
    pub drain_seconds: f64,
    pub drain_complete: bool,
    pub check_seconds: f64,
    pub load: LoadStats,
    /// Orders in the event store.
    pub orders: u64,
    /// Events in the event store.
    pub events: u64,
    /// Orders by the status their history folds to.
    pub finals: BTreeMap<String, u64>,
    pub refunded: u64,
    /// deadlinewatcher's cancels by the step they ended.
    pub deadline_cancels: BTreeMap<String, u64>,
    /// paymentsdb's payment rows by status.
    pub payments: BTreeMap<String, u64>,
    pub faults: Vec<FaultRecord>,
    pub invariants: Vec<Invariant>,
    /// Where the processes' logs were kept, if they were.
    pub logs: Option<PathBuf>,
}

impl Report {
    /// Whether every invariant holds.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(Invariant::holds)
    }

    /// The invariants that do not hold.
    pub fn failed(&self) -> Vec<&Invariant> {
        self.invariants.iter().filter(|i| !i.holds()).collect()
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(key, n)| format!("{key} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = &self.load;
        writeln!(
            f,
            "chaos run: seed {}, {:?} schedule (down times ×{}), {:.0} s planned at {} orders/s \
             from {} customers",
            self.seed,
            self.schedule,
            self.down_scale,
            self.planned_seconds,
            self.rate,
            self.customers
        )?;
        writeln!(
            f,
            "  times: startup {:.1} s, load {:.1} s, drain {:.1} s{}, checks {:.1} s",
            self.startup_seconds,
            self.load_seconds,
            self.drain_seconds,
            if self.drain_complete {
                ""
            } else {
                " (not drained)"
            },
            self.check_seconds
        )?;
        writeln!(
            f,
            "  orders: offered {}, accepted {}, retried {} ({} requests), gave up {}, \
             unexpected answers {}; slowest accept {:.1} s",
            load.offered,
            load.accepted,
            load.retried_orders,
            load.retried_requests,
            load.gave_up,
            load.unexpected,
            load.longest_accept_seconds
        )?;
        writeln!(f, "  POST answers: {}", counts(&load.post_answers))?;
        writeln!(
            f,
            "  cancels: requested {}, cancelled {}, too late (409) {}, retried {}, gave up {}; \
             answers: {}",
            load.cancels.requested,
            load.cancels.cancelled,
            load.cancels.too_late,
            load.cancels.retried_requests,
            load.cancels.gave_up,
            counts(&load.cancels.answers)
        )?;
        writeln!(
            f,
            "  event store: {} orders, {} events; by status: {}; refunded {}",
            self.orders,
            self.events,
            counts(&self.finals),
            self.refunded
        )?;
        writeln!(f, "  payments by status: {}", counts(&self.payments))?;
        writeln!(
            f,
            "  deadline cancels by step: {}",
            counts(&self.deadline_cancels)
        )?;
        writeln!(f, "faults ({}):", self.faults.len())?;
        for fault in &self.faults {
            let outages = fault
                .outages
                .iter()
                .map(|o| match o.down_seconds {
                    Some(down) => format!("{} {} {:.1} s", o.component, o.how, down),
                    None => format!("{} {} NOT BACK", o.component, o.how),
                })
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                f,
                "  +{:>6.1} s  {:<72} down: {}",
                fault.at_seconds, fault.name, outages
            )?;
        }
        writeln!(f, "invariants:")?;
        for invariant in &self.invariants {
            let verdict = if invariant.holds() { "PASS" } else { "FAIL" };
            write!(
                f,
                "  {verdict}  {} ({} {} checked",
                invariant.name, invariant.checked, invariant.unit
            )?;
            if invariant.holds() {
                writeln!(f, ")")?;
            } else {
                writeln!(f, ", {} violations)", invariant.violations)?;
                for example in &invariant.examples {
                    writeln!(f, "        - {example}")?;
                }
            }
        }
        if let Some(logs) = &self.logs {
            writeln!(f, "logs: {}", logs.display())?;
        }
        let failed = self.failed().len();
        if failed == 0 {
            writeln!(
                f,
                "result: PASS, all {} invariants hold",
                self.invariants.len()
            )
        } else {
            writeln!(
                f,
                "result: FAIL, {failed} of {} invariants do not hold",
                self.invariants.len()
            )
        }
    }
}
