//! Sweeps of a read model the test writes by hand (so that it can be behind, or ahead), against the
//! real event store.

use std::time::Duration;

use deadlinewatcher::{Outcome, Watcher, scan};
use order_domain::{DeadlineDecision, Deadlines, OrderStatus, Step, deadline_event_id, event_type};
use pipeline_harness::ORDERS;
use pipeline_harness::{Setup, Stack};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const DEADLINES: Deadlines = Deadlines {
    payment: Duration::from_secs(30),
    review: Duration::from_secs(60),
};

struct World {
    stack: Stack,
    orders: PgPool,
}

impl World {
    async fn start() -> World {
        let stack = Stack::start_with(Setup {
            databases: &[ORDERS],
            ..Setup::default()
        })
        .await;
        let orders = stack.pool(ORDERS).await;
        World { stack, orders }
    }

    fn watcher(&self) -> Watcher {
        Watcher::new(self.stack.store.clone(), self.orders.clone(), DEADLINES)
    }

    /// The read model's row of `order_id` as querymodelworker leaves it after the order's first
    /// `version` stored events: status and the stored time of the last of them.
    async fn project(&self, order_id: Uuid, status: OrderStatus, version: i64) {
        let history = self.stack.history(order_id).await;
        let created = history.first().expect("the order was created");
        let last = &history[usize::try_from(version - 1).expect("a version from 1")];
        sqlx::query(
            "INSERT INTO orders (order_id, customer_id, restaurant_id, status, amount, version, \
             created_on, updated_at) VALUES ($1, 'c1', 'r1', $2, 25.00, $3, $4, $5) \
             ON CONFLICT (order_id) DO UPDATE SET status = $2, version = $3, updated_at = $5",
        )
        .bind(order_id)
        .bind(status.as_str())
        .bind(version)
        .bind(created.created_at)
        .bind(last.created_at)
        .execute(&self.orders)
        .await
        .expect("read model row written");
    }

    /// The stored time of the order's event at `version`.
    async fn stored_at(&self, order_id: Uuid, version: i64) -> OffsetDateTime {
        self.stack
            .history(order_id)
            .await
            .into_iter()
            .find(|event| event.aggregate_version == version)
            .expect("the event exists")
            .created_at
    }

    async fn event_types(&self, order_id: Uuid) -> Vec<String> {
        self.stack
            .history(order_id)
            .await
            .into_iter()
            .map(|event| event.event_type)
            .collect()
    }
}

fn after(at: OffsetDateTime, seconds: i64) -> OffsetDateTime {
    at + time::Duration::seconds(seconds)
}

#[tokio::test]
async fn an_overdue_pending_order_is_cancelled_once_naming_the_step_and_the_deadline() {
    let world = World::start().await;
    let order_id = world.stack.place("c1", "25.00").await;
    world.project(order_id, OrderStatus::Pending, 1).await;
    let created_at = world.stored_at(order_id, 1).await;
    let watcher = world.watcher();
    let stop = CancellationToken::new();

    // Expected: one second before its deadline the order is not even a candidate.
    let early = watcher.sweep(after(created_at, 29), &stop).await;
    assert_eq!(early.candidates, 0, "{early:?}");

    // Expected: at its deadline it is cancelled, with the step and the deadline in the reason, under
    // the id derived from the order and the step, caused by the `created` that opened the step.
    let sweep = watcher.sweep(after(created_at, 30), &stop).await;
    assert_eq!((sweep.candidates, sweep.cancelled), (1, 1), "{sweep:?}");
    let history = world.stack.history(order_id).await;
    let cancel = history.last().expect("events");
    assert_eq!(cancel.event_type, event_type::CANCELLED);
    assert_eq!(cancel.aggregate_version, 2);
    assert_eq!(cancel.event_id, deadline_event_id(order_id, Step::Payment));
    assert_eq!(
        cancel.event_data["reason"],
        "payment not received within the 30s payment deadline"
    );
    assert_eq!(
        cancel.metadata.get("causation_id"),
        Some(&history[0].event_id.to_string())
    );
    assert_eq!(
        cancel.metadata.get("correlation_id"),
        Some(&order_id.to_string())
    );

    // Expected: the read model still shows it Pending (not projected yet): the same watcher does
    // not read it again, and a fresh one (a restart) reads it and finds it Cancelled.
    let again = watcher.sweep(after(created_at, 31), &stop).await;
    assert_eq!((again.skipped, again.cancelled), (1, 0), "{again:?}");
    let restarted = world.watcher();
    let fresh = restarted.sweep(after(created_at, 31), &stop).await;
    assert_eq!((fresh.closed, fresh.cancelled), (1, 0), "{fresh:?}");
    assert_eq!(world.event_types(order_id).await, ["created", "cancelled"]);
}

#[tokio::test]
async fn watchers_deciding_the_same_order_at_once_append_one_cancel() {
    let world = World::start().await;
    let order_id = world.stack.place("c1", "25.00").await;
    world.project(order_id, OrderStatus::Pending, 1).await;
    let now = after(world.stored_at(order_id, 1).await, 45);
    let candidate = scan::page(&world.orders, Step::Payment, now, None, 10)
        .await
        .expect("the read model answers")
        .pop()
        .expect("the order is a candidate");
    let watchers: Vec<Watcher> = (0..4).map(|_| world.watcher()).collect();

    let outcomes = futures::future::join_all(
        watchers
            .iter()
            .map(|watcher| watcher.enforce(&candidate, now)),
    )
    .await;

    // Expected: each watcher either appended the cancel (the same event id: the event store keeps
    // one and answers the others with its version) or found the order Cancelled already.
    for outcome in &outcomes {
        let outcome = outcome.as_ref().expect("decided");
        assert!(
            matches!(
                outcome,
                Outcome::Cancelled {
                    step: Step::Payment,
                    version: 2
                } | Outcome::Closed(OrderStatus::Cancelled)
            ),
            "{outcomes:?}"
        );
    }
    assert_eq!(world.event_types(order_id).await, ["created", "cancelled"]);
}

#[tokio::test]
async fn a_read_model_that_is_behind_does_not_cancel_a_debited_order_before_its_review_deadline() {
    let world = World::start().await;
    let order_id = world.stack.place("c1", "25.00").await;
    world.project(order_id, OrderStatus::Pending, 1).await;
    world.stack.debit(order_id).await;
    let created_at = world.stored_at(order_id, 1).await;
    let debited_at = world.stored_at(order_id, 2).await;
    let watcher = world.watcher();
    let stop = CancellationToken::new();

    // Expected: past the payment deadline the read model (still at `created`) nominates the order,
    // but its history says Paid since the debit, with the review deadline a minute after it.
    let now = after(created_at, 31);
    let sweep = watcher.sweep(now, &stop).await;
    assert_eq!((sweep.candidates, sweep.not_due), (1, 1), "{sweep:?}");
    assert_eq!(
        world.event_types(order_id).await,
        ["created", "paymentdebited"]
    );

    // Expected: while the read model stays behind, the order is not read again before that deadline.
    let sweep = watcher.sweep(after(created_at, 40), &stop).await;
    assert_eq!(sweep.skipped, 1, "{sweep:?}");

    // Expected: once the review deadline has passed too, the order is cancelled at the debit's
    // version, for its review.
    let sweep = watcher.sweep(after(debited_at, 60), &stop).await;
    assert_eq!(sweep.cancelled, 1, "{sweep:?}");
    let history = world.stack.history(order_id).await;
    let cancel = history.last().expect("events");
    assert_eq!(cancel.aggregate_version, 3);
    assert_eq!(cancel.event_id, deadline_event_id(order_id, Step::Review));
    assert_eq!(
        cancel.event_data["reason"],
        "review not completed within the 1m review deadline"
    );
}

#[tokio::test]
async fn a_debit_that_lands_between_the_decision_and_the_append_wins_and_the_order_goes_on() {
    let world = World::start().await;
    let order_id = world.stack.place("c1", "25.00").await;
    world.project(order_id, OrderStatus::Pending, 1).await;
    let now = after(world.stored_at(order_id, 1).await, 30);
    let watcher = world.watcher();
    let gate = watcher.gate_next_append();
    let candidate = scan::page(&world.orders, Step::Payment, now, None, 10)
        .await
        .expect("the read model answers")
        .pop()
        .expect("the order is a candidate");

    // The watcher decides to cancel at version 1 and waits at the gate; the debit lands meanwhile.
    let deciding = watcher.enforce(&candidate, now);
    let racing = async {
        gate.arrived().await;
        world.stack.debit(order_id).await;
        gate.open();
    };
    let (outcome, ()) = tokio::join!(deciding, racing);

    // Expected: the cancel conflicts, the order is decided again on its new history (Paid since the
    // debit, the review still has its minute), and nothing is appended.
    let outcome = outcome.expect("decided");
    assert!(
        matches!(outcome, Outcome::NotDue(due) if due.step == Step::Review),
        "{outcome:?}"
    );
    assert_eq!(
        world.event_types(order_id).await,
        ["created", "paymentdebited"]
    );
    let order = world.stack.order(order_id).await;
    assert!(matches!(
        order.enforce_deadline(world.stored_at(order_id, 2).await, now, &DEADLINES),
        DeadlineDecision::NotYet(_)
    ));
}

#[tokio::test]
async fn a_sweep_pages_through_every_overdue_order_and_reads_no_finished_one() {
    let world = World::start().await;
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    // 300 overdue Pending rows (more than a page) without events, and finished ones.
    for (count, status) in [(300, "Pending"), (50, "Approved"), (50, "Cancelled")] {
        for _ in 0..count {
            sqlx::query(
                "INSERT INTO orders (order_id, customer_id, restaurant_id, status, amount, \
                 version, created_on, updated_at) VALUES ($1, 'c', 'r', $2, 1.00, 1, $3, $3)",
            )
            .bind(Uuid::new_v4())
            .bind(status)
            .bind(since)
            .execute(&world.orders)
            .await
            .expect("row written");
        }
    }
    let sweep = world
        .watcher()
        .sweep(OffsetDateTime::now_utc(), &CancellationToken::new())
        .await;

    // Expected: every Pending row is a candidate (each one unreadable: the event store has no
    // such order, which fails that order and not the sweep); no finished one is.
    assert_eq!(sweep.candidates, 300, "{sweep:?}");
    assert_eq!(sweep.failed, 300, "{sweep:?}");
    assert!(
        sweep
            .error
            .as_deref()
            .is_some_and(|error| error.contains("has no events")),
        "{sweep:?}"
    );
}

#[tokio::test]
async fn the_scan_reads_the_open_orders_index_even_with_a_generic_plan() {
    let world = World::start().await;
    let mut conn = world.orders.acquire().await.expect("a connection");
    for setting in [
        "SET enable_seqscan = off",
        "SET plan_cache_mode = force_generic_plan",
    ] {
        sqlx::raw_sql(setting)
            .execute(&mut *conn)
            .await
            .expect(setting);
    }
    for step in Step::ALL {
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", scan::query(step)))
            .bind(OffsetDateTime::now_utc())
            .bind(OffsetDateTime::UNIX_EPOCH)
            .bind(Uuid::nil())
            .bind(10_i64)
            .fetch_all(&mut *conn)
            .await
            .expect("EXPLAIN answers");
        let plan = plan.join("\n");
        assert!(plan.contains("orders_open"), "{step}:\n{plan}");
    }
}
