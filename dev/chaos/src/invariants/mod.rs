//! After the load: waiting for the pipeline to drain, then checking what must hold whatever was
//! killed, against the event store, the read model, the payments database and the stream.

use std::collections::BTreeMap;
use std::str::FromStr as _;

use anyhow::Context as _;
use order_domain::{Deadlines, Order, OrderEvent, Step, deadline_event_id};
use pipeline_runtime::deadletter::dl_headers;
use rust_decimal::Decimal;
use serde::Serialize;

use super::faults::Outcome;
use super::load::LoadStats;
use super::{INITIAL_CREDIT, REVIEW_MAX_AMOUNT};
use e2e_tests::Pipeline;

mod checks;
mod drain;
mod snapshot;

use checks::*;
use drain::*;
pub(crate) use drain::{Drain, drain};
use snapshot::*;

/// How many violations an invariant quotes.
const EXAMPLES: usize = 5;

/// One property of the run, with how many things were checked and what broke it.
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    /// A short name: `recovery`, `clients`, `drain`, `final`, `history`, `read-model`,
    /// `payments`, `rules`, `deadlines`, `stream`, `dead-letters`.
    pub key: &'static str,
    pub name: &'static str,
    /// How many things were checked, in `unit`s.
    pub checked: u64,
    pub unit: &'static str,
    pub violations: u64,
    /// The first few violations.
    pub examples: Vec<String>,
}

impl Invariant {
    fn new(key: &'static str, name: &'static str, unit: &'static str) -> Invariant {
        Invariant {
            key,
            name,
            checked: 0,
            unit,
            violations: 0,
            examples: Vec::new(),
        }
    }

    pub fn holds(&self) -> bool {
        self.violations == 0
    }

    fn violation(&mut self, what: impl Into<String>) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(what.into());
        }
    }

    /// Records a violation when `ok` is false.
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.violation(what());
        }
    }
}

/// The figures and invariants of the checks.
pub(crate) struct Checked {
    /// Payment rows by status (debited, refunded, failed, voided).
    pub payments: BTreeMap<String, u64>,
    pub orders: u64,
    pub events: u64,
    pub finals: BTreeMap<String, u64>,
    pub refunded: u64,
    /// deadlinewatcher's cancels by the step they ended (`payment`, `review`).
    pub deadline_cancels: BTreeMap<String, u64>,
    pub invariants: Vec<Invariant>,
}

/// An order's history, decoded and folded.
struct History<'a> {
    events: Vec<(&'a Stored, OrderEvent)>,
    order: Order,
}

pub(crate) async fn check(
    pipeline: &Pipeline,
    load: &LoadStats,
    faults: &Outcome,
    drain: &Drain,
    deadlines: &Deadlines,
) -> anyhow::Result<Checked> {
    let stores = Stores::connect(pipeline)
        .await
        .context("connecting to check the invariants")?;
    let snapshot = Snapshot::take(&stores).await;
    stores.close().await;
    let snapshot = snapshot?;
    let initial = Decimal::from_str(INITIAL_CREDIT).context("INITIAL_CREDIT")?;
    let review_max = Decimal::from_str(REVIEW_MAX_AMOUNT).context("REVIEW_MAX_AMOUNT")?;

    let mut recovery = Invariant::new(
        "recovery",
        "every process came back after each fault and none exited by itself",
        "processes",
    );
    recovery.checked = faults
        .records
        .iter()
        .map(|r| r.outages.len() as u64)
        .sum::<u64>()
        + faults.checks;
    for problem in &faults.problems {
        recovery.violation(problem.clone());
    }

    let clients = clients(load);

    let mut drained = Invariant::new(
        "drain",
        "the pipeline drained (orders settled, outbox empty, nothing pending)",
        "runs",
    );
    drained.checked = 1;
    if !drain.complete {
        drained.violation(format!(
            "after {:.0} s: {}",
            drain.seconds,
            drain.left.as_deref().unwrap_or("(unknown)")
        ));
    }

    let (histories, history) = histories(&snapshot);
    let settled = settled_orders(&snapshot, load, &histories);
    let read_model = read_model(&snapshot, &histories);
    let payments = payments(&snapshot, &histories, initial);
    let rules = rules(&histories, initial, review_max);
    let deadlines = deadline_cancels(&histories, deadlines);
    let stream = stream(&snapshot);
    let mut dead = Invariant::new(
        "dead-letters",
        "no message was dead-lettered",
        "dead letters",
    );
    dead.checked = snapshot.dead_letters.len() as u64;
    for letter in &snapshot.dead_letters {
        dead.violation(format!(
            "{} (from {}): {}",
            letter.subject,
            letter
                .header
                .get(dl_headers::WORKER)
                .map_or("?", String::as_str),
            letter
                .header
                .get(dl_headers::REASON)
                .map_or("no reason", String::as_str)
        ));
    }

    let mut finals: BTreeMap<String, u64> = BTreeMap::new();
    let mut refunded = 0;
    let mut deadline_cancels: BTreeMap<String, u64> = BTreeMap::new();
    for history in histories.values() {
        *finals
            .entry(history.order.status.as_str().to_owned())
            .or_default() += 1;
        if history.order.refunded {
            refunded += 1;
        }
        for (stored, event) in &history.events {
            if let OrderEvent::Cancelled(_) = event
                && let Some(step) = Step::ALL.into_iter().find(|step| {
                    stored.event_id == deadline_event_id(history.order.order_id, *step)
                })
            {
                *deadline_cancels
                    .entry(step.as_str().to_owned())
                    .or_default() += 1;
            }
        }
    }
    let mut payment_rows: BTreeMap<String, u64> = BTreeMap::new();
    for row in snapshot.payments.values() {
        *payment_rows.entry(row.status.clone()).or_default() += 1;
    }
    Ok(Checked {
        payments: payment_rows,
        orders: histories.len() as u64,
        events: snapshot.events.len() as u64,
        finals,
        refunded,
        deadline_cancels,
        invariants: vec![
            recovery, clients, drained, settled, history, read_model, payments, rules, deadlines,
            stream, dead,
        ],
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pipeline_runtime::stream::STREAM;
    use sqlx::PgPool;
    use uuid::Uuid;

    use super::*;
    use crate::load::{Kind, PlacedOrder};

    fn failing(checked: &Checked) -> Vec<&'static str> {
        checked
            .invariants
            .iter()
            .filter(|i| !i.holds())
            .map(|i| i.key)
            .collect()
    }

    async fn execute(pipeline: &Pipeline, database: &str, statement: &str) {
        let pool = PgPool::connect(&pipeline.database_url(database))
            .await
            .expect(database);
        let done = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect(statement);
        assert_eq!(done.rows_affected(), 1, "{statement}");
        pool.close().await;
    }

    /// The checks are only worth their PASS if they see a broken pipeline: a settled run passes,
    /// then a read-model row, a wallet and the stream are tampered with and exactly those
    /// invariants fail.
    #[tokio::test]
    async fn the_checks_pass_a_settled_pipeline_and_catch_what_was_tampered_with() {
        let pipeline = Pipeline::start().await.expect("the pipeline starts");
        let mut load = LoadStats::default();
        for (customer, price, kind) in [
            ("tamper-a", "20.00", Kind::Small),
            ("tamper-b", "600.00", Kind::OverReviewLimit),
        ] {
            let order_id = pipeline.place(customer, price, 1).await;
            pipeline.wait_final(&order_id).await;
            load.placed.push(PlacedOrder {
                order_id: order_id.parse().expect("a UUID"),
                customer_id: customer.to_owned(),
                amount: price.parse().expect("a decimal"),
                kind,
            });
        }
        load.offered = 2;
        load.accepted = 2;
        let faults = Outcome::default();
        let drained = drain(&pipeline, &load, Duration::from_secs(30)).await;
        assert!(drained.complete, "{:?}", drained.left);

        let clean = check(&pipeline, &load, &faults, &drained, &Deadlines::DEFAULT)
            .await
            .expect("the checks run");
        assert_eq!(failing(&clean), Vec::<&str>::new(), "a settled pipeline");
        assert_eq!(clean.orders, 2);
        assert_eq!(clean.finals.get("Approved"), Some(&1));
        assert_eq!(clean.finals.get("Rejected"), Some(&1));
        assert_eq!(clean.refunded, 1);

        let approved = load.placed[0].order_id;
        execute(
            &pipeline,
            "ordersdb",
            &format!("UPDATE orders SET status = 'Paid' WHERE order_id = '{approved}'"),
        )
        .await;
        execute(
            &pipeline,
            "paymentsdb",
            "UPDATE wallets SET balance = balance + 1 WHERE customer_id = 'tamper-b'",
        )
        .await;
        let stream = pipeline
            .jetstream()
            .await
            .get_stream(STREAM)
            .await
            .expect("the stream");
        assert!(stream.delete_message(1).await.expect("deleted"));

        let tampered = check(&pipeline, &load, &faults, &drained, &Deadlines::DEFAULT)
            .await
            .expect("the checks run");
        assert_eq!(
            failing(&tampered),
            ["final", "read-model", "payments", "stream"],
            "each tampering is seen by its invariant"
        );
    }

    #[test]
    fn an_order_is_settled_when_final_and_refunded_where_it_was_debited() {
        let paid = Some(Uuid::nil());
        assert!(settled("Approved", false, paid));
        assert!(settled("PaymentFailed", false, None));
        assert!(
            !settled("Rejected", false, paid),
            "a rejection owes a refund"
        );
        assert!(settled("Rejected", true, paid));
        assert!(settled("Cancelled", false, None), "nothing was debited");
        assert!(
            !settled("Cancelled", false, paid),
            "a paid cancel owes a refund"
        );
        assert!(settled("Cancelled", true, paid));
        assert!(!settled("Pending", false, None));
        assert!(!settled("Paid", false, paid));
    }

    #[test]
    fn an_invariant_counts_every_violation_and_quotes_the_first_few() {
        let mut invariant = Invariant::new("x", "x", "things");
        for i in 0..8 {
            invariant.expect(i % 2 == 0, || format!("odd {i}"));
        }
        assert_eq!(invariant.violations, 4);
        assert_eq!(invariant.examples.len(), 4);
        assert!(!invariant.holds());
        for i in 0..4 {
            invariant.violation(format!("more {i}"));
        }
        assert_eq!(invariant.violations, 8);
        assert_eq!(invariant.examples.len(), EXAMPLES);
    }
}
