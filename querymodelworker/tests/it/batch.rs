//! A batch of deliveries projected in one transaction ends where projecting each would.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use order_domain::{OrderCreated, OrderEvent};
use pipeline_runtime::consumer::is_outage;
use pipeline_runtime::db;
use pipeline_runtime::eventstore::EventStoreClient;
use pipeline_runtime::stream::EventEnvelope;
use querymodelworker::{Outcome, ProjectionError, Projector};
use sqlx::Executor as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testkit::scans;
use uuid::Uuid;

use crate::harness::*;

/// Appends `events` to a new order and returns them as the event store gives them.
async fn history(stack: &Stack, order: &OrderCreated, events: &[OrderEvent]) -> Vec<EventEnvelope> {
    stack.append_all(events).await;
    let history = stack
        .store
        .events(&order.order_id.to_string())
        .await
        .expect("history");
    assert_eq!(history.len(), events.len());
    history
}

/// The transaction that last wrote the order's row (PostgreSQL's `xmin`).
async fn writer(pool: &PgPool, order_id: Uuid) -> String {
    let (xmin,): (String,) = sqlx::query_as("SELECT xmin::text FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .expect("xmin");
    xmin
}

fn refused(result: &Result<Outcome, ProjectionError>) -> &str {
    match result {
        Err(ProjectionError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_mixed_batch_gives_each_event_its_outcome_and_ends_where_one_by_one_would() {
    let stack = Stack::start().await;
    let projector = Projector::new(stack.orders.clone(), stack.store.clone());
    // A second read model, fed the same deliveries one at a time.
    let reference_url = Schema {
        database: "ordersdb_reference",
        ..ORDERS
    }
    .create(&stack.postgres)
    .await;
    let reference_pool = PgPool::connect(&reference_url).await.expect("connect");
    let reference = Projector::new(reference_pool.clone(), stack.store.clone());

    // New: only its `created` is delivered.
    let fresh = created();
    let fresh_events = history(&stack, &fresh, &[OrderEvent::Created(fresh.clone())]).await;
    // New: its three events arrive together, newest first, one of them twice.
    let whole = created();
    let whole_events = history(
        &stack,
        &whole,
        &[
            OrderEvent::Created(whole.clone()),
            debited(&whole),
            approved(&whole),
        ],
    )
    .await;
    // Stored at 2: its `created` comes again.
    let known = created();
    let known_events = history(
        &stack,
        &known,
        &[OrderEvent::Created(known.clone()), debited(&known)],
    )
    .await;
    // Stored at 1: version 3 is delivered, version 2 is only in the event store.
    let behind = created();
    let behind_events = history(
        &stack,
        &behind,
        &[
            OrderEvent::Created(behind.clone()),
            debited(&behind),
            approved(&behind),
        ],
    )
    .await;
    // Stored at 1 (Pending): `approved` is an event the state machine refuses.
    let poisoned = created();
    let poisoned_events = history(
        &stack,
        &poisoned,
        &[OrderEvent::Created(poisoned.clone()), approved(&poisoned)],
    )
    .await;
    // New: `created` applies, the `approved` after it is refused.
    let half = created();
    let half_events = history(
        &stack,
        &half,
        &[OrderEvent::Created(half.clone()), approved(&half)],
    )
    .await;
    for projector in [&projector, &reference] {
        for envelope in [
            &known_events[0],
            &known_events[1],
            &behind_events[0],
            &poisoned_events[0],
        ] {
            projector
                .project(envelope.clone())
                .await
                .expect("projected");
        }
    }
    let mut not_an_order = fresh_events[0].clone();
    not_an_order.aggregate_type = "customer".into();

    let batch = vec![
        whole_events[2].clone(),    // 0
        half_events[0].clone(),     // 1
        whole_events[0].clone(),    // 2
        known_events[0].clone(),    // 3
        behind_events[2].clone(),   // 4
        whole_events[1].clone(),    // 5
        poisoned_events[1].clone(), // 6
        whole_events[1].clone(),    // 7
        fresh_events[0].clone(),    // 8
        half_events[1].clone(),     // 9
        not_an_order,               // 10
    ];
    let results = projector.project_batch(batch.clone()).await;

    assert_eq!(results.len(), batch.len());
    let ok = |i: usize| match &results[i] {
        Ok(outcome) => *outcome,
        Err(err) => panic!("event {i}: {err:#}"),
    };
    assert_eq!(ok(2), Outcome::Applied { from: 0, to: 1 });
    assert_eq!(ok(5), Outcome::Applied { from: 1, to: 2 });
    assert_eq!(ok(0), Outcome::Applied { from: 2, to: 3 });
    assert_eq!(
        ok(7),
        Outcome::Duplicate { stored: 2 },
        "the copy of version 2"
    );
    assert_eq!(ok(3), Outcome::Duplicate { stored: 2 });
    assert_eq!(
        ok(4),
        Outcome::Applied { from: 1, to: 3 },
        "the gap was filled from the event store"
    );
    assert_eq!(ok(8), Outcome::Applied { from: 0, to: 1 });
    assert_eq!(ok(1), Outcome::Applied { from: 0, to: 1 });
    assert!(refused(&results[6]).contains("Pending"), "{:?}", results[6]);
    assert!(refused(&results[9]).contains("Pending"), "{:?}", results[9]);
    assert!(
        refused(&results[10]).contains("customer"),
        "{:?}",
        results[10]
    );

    // The events the batch settled itself were written by one transaction; the gap's fill by another.
    let batch_tx = writer(&stack.orders, whole.order_id).await;
    assert_eq!(writer(&stack.orders, fresh.order_id).await, batch_tx);
    assert_eq!(writer(&stack.orders, half.order_id).await, batch_tx);
    assert_ne!(writer(&stack.orders, behind.order_id).await, batch_tx);

    let row = stack.row(whole.order_id).await.expect("row");
    assert_eq!((row.status.as_str(), row.version), ("Approved", 3));
    assert_eq!(row.trace_id.as_deref(), Some(TRACE_ID));
    let row = stack.row(behind.order_id).await.expect("row");
    assert_eq!((row.status.as_str(), row.version), ("Approved", 3));
    let row = stack.row(poisoned.order_id).await.expect("row");
    assert_eq!((row.status.as_str(), row.version), ("Pending", 1));
    let row = stack.row(half.order_id).await.expect("row");
    assert_eq!((row.status.as_str(), row.version), ("Pending", 1));

    // One delivery at a time, in the batch's order, into the reference read model.
    for (i, envelope) in batch.into_iter().enumerate() {
        let one = reference.project(envelope).await;
        assert_eq!(
            one.is_ok(),
            results[i].is_ok(),
            "event {i}: {one:?} vs {:?}",
            results[i]
        );
    }
    assert_eq!(dump(&stack.orders).await, dump(&reference_pool).await);
}

#[tokio::test]
async fn two_batches_racing_on_the_same_orders_apply_each_event_once() {
    let stack = Stack::start().await;
    // The test server runs every transaction SERIALIZABLE: the loser of a race is aborted and
    // retried.
    let projector = Projector::new(stack.orders.clone(), stack.store.clone());
    race_batches(&stack, &projector).await;
}

#[tokio::test]
async fn two_batches_racing_at_read_committed_apply_each_event_once() {
    let stack = Stack::start().await;
    // At READ COMMITTED the loser is not aborted: its insert does nothing, and the row locks make
    // it wait for the winner; only the guards keep it right.
    let pool = PgPoolOptions::new()
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET default_transaction_isolation = 'read committed'")
                    .await
                    .map(|_| ())
            })
        })
        .connect(&stack.orders_url)
        .await
        .expect("connect");
    let (isolation,): (String,) = sqlx::query_as("SHOW transaction_isolation")
        .fetch_one(&pool)
        .await
        .expect("isolation");
    assert_eq!(isolation, "read committed");
    let projector = Projector::new(pool, stack.store.clone());
    race_batches(&stack, &projector).await;
}

/// Two batches of the same events, one reversed, projected at the same time, a few rounds.
async fn race_batches(stack: &Stack, projector: &Projector) {
    for round in 0..3 {
        let mut batch = Vec::new();
        // Half the orders are stored at 1 (the batches race on the update), half are new (on the
        // insert).
        let mut start: HashMap<Uuid, i64> = HashMap::new();
        for n in 0..6 {
            let order = created();
            let events = history(
                stack,
                &order,
                &[
                    OrderEvent::Created(order.clone()),
                    debited(&order),
                    approved(&order),
                ],
            )
            .await;
            let stored = if n % 2 == 0 {
                projector
                    .project(events[0].clone())
                    .await
                    .expect("projected");
                1
            } else {
                0
            };
            start.insert(order.order_id, stored);
            batch.extend(events);
        }
        let mut reversed = batch.clone();
        reversed.reverse();

        let (first, second) = tokio::join!(
            projector.project_batch(batch.clone()),
            projector.project_batch(reversed.clone())
        );

        let mut applied: BTreeMap<Uuid, Vec<(i64, i64)>> = BTreeMap::new();
        for (envelope, result) in batch.iter().zip(first).chain(reversed.iter().zip(second)) {
            let order_id: Uuid = envelope.aggregate_id.parse().expect("a UUID");
            match result {
                Ok(Outcome::Applied { from, to }) => {
                    applied.entry(order_id).or_default().push((from, to));
                }
                Ok(Outcome::Duplicate { .. }) => {}
                Err(err) => panic!("round {round}, order {order_id}: {err:#}"),
            }
        }
        for (order_id, stored) in start {
            // The applied steps chain from the stored version to 3 without overlap.
            let mut steps = applied.remove(&order_id).unwrap_or_default();
            steps.sort_unstable();
            let mut at = stored;
            for (from, to) in &steps {
                assert_eq!(*from, at, "round {round}, order {order_id}: {steps:?}");
                at = *to;
            }
            assert_eq!(at, 3, "round {round}, order {order_id}: {steps:?}");

            let row = stack.row(order_id).await.expect("row exists");
            assert_eq!((row.status.as_str(), row.version), ("Approved", 3));
            let (items,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM order_items WHERE order_id = $1")
                    .bind(order_id)
                    .fetch_one(&stack.orders)
                    .await
                    .expect("count");
            assert_eq!(items, 2, "the items were inserted once");
        }
    }
}

#[tokio::test]
async fn a_batch_against_an_unreachable_database_is_an_outage_for_each_of_its_events() {
    // Nothing listens on port 1: every connection is refused.
    let pool = db::lazy_pool(
        "postgresql://root@127.0.0.1:1/ordersdb?sslmode=disable",
        2,
        Duration::from_millis(300),
    )
    .expect("a valid URL");
    let store = EventStoreClient::connect_lazy("http://127.0.0.1:1", Duration::from_millis(300))
        .expect("a valid URL");
    let projector = Projector::new(pool, store);
    let order = created();
    let envelope = |version: i64, event: OrderEvent| EventEnvelope {
        event_id: Uuid::new_v4(),
        event_type: event.event_type().to_owned(),
        aggregate_id: order.order_id.to_string(),
        aggregate_type: order_domain::AGGREGATE_TYPE.to_owned(),
        aggregate_version: version,
        stream: "ORDERS".to_owned(),
        event_data: event.to_json(),
        metadata: BTreeMap::new(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    let mut undecodable = envelope(3, approved(&order));
    undecodable.event_data = serde_json::json!("not an event");

    let results = projector
        .project_batch(vec![
            envelope(1, OrderEvent::Created(order.clone())),
            undecodable,
            envelope(2, debited(&order)),
        ])
        .await;

    assert_eq!(results.len(), 3);
    for (i, result) in results.into_iter().enumerate() {
        match (i, result) {
            (1, result) => {
                refused(&result);
            }
            (_, Err(err @ ProjectionError::BatchDatabase(_))) => {
                let err = anyhow::Error::from(err);
                assert!(is_outage(&err), "event {i}: {err:#}");
            }
            (_, other) => panic!("event {i}: expected a database outage, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_row_another_instance_moved_on_is_never_moved_back_onto_this_instances_state() {
    let stack = Stack::start().await;
    let order = created();
    let events = history(
        &stack,
        &order,
        &[
            OrderEvent::Created(order.clone()),
            debited(&order),
            approved(&order),
        ],
    )
    .await;
    // This instance writes the new row (version 1) and remembers it; another instance then
    // projects the next two events.
    let ours = Projector::new(stack.orders.clone(), stack.store.clone());
    let theirs = Projector::new(stack.orders.clone(), stack.store.clone());
    let first = ours.project_batch(vec![events[0].clone()]).await;
    assert!(
        matches!(first[0], Ok(Outcome::Applied { from: 0, to: 1 })),
        "{first:?}"
    );
    let later = theirs.project_batch(events[1..].to_vec()).await;
    assert!(later.iter().all(Result::is_ok), "{later:?}");

    // Expected: a late copy of version 2 reaching this instance, which remembers the order at
    // version 1, is a duplicate; the row stays Approved at version 3.
    let copy = ours.project_batch(vec![events[1].clone()]).await;
    assert!(
        matches!(copy[0], Ok(Outcome::Duplicate { stored: 3 })),
        "{copy:?}"
    );
    let row = stack.row(order.order_id).await.expect("the row");
    assert_eq!((row.status.as_str(), row.version), ("Approved", 3));
}

/// The worker's connections plan each statement once (a keyed pool). Planned while the tables were
/// analyzed empty, which makes PostgreSQL's generic plans of the batch statements sequential scans,
/// the projection still finds its rows by their ids once `orders` holds many rows.
#[tokio::test]
async fn a_projection_planned_on_an_analyzed_empty_table_reads_it_by_index_as_it_grows() {
    let stack = Stack::start().await;
    scans::statistics_say_empty(&stack.orders, &["orders", "order_items"]).await;
    let worker = stack.worker().await;
    let project = async || {
        let order = created();
        stack
            .append_all(&[OrderEvent::Created(order.clone()), debited(&order)])
            .await;
        stack.wait_until_consumed().await;
    };
    // Planned now, on the empty tables.
    project().await;
    // The table grows, and its statistics still say it is empty.
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, restaurant_id, status, amount, version, \
         created_on, updated_at) \
         SELECT gen_random_uuid(), 'c', 'r', 'Approved', 1, 3, now(), now() \
         FROM generate_series(1, 20000)",
    )
    .execute(&stack.orders)
    .await
    .expect("orders inserted");
    scans::count_from_now(&stack.orders, "orders").await;
    const LATER: i64 = 3;
    for _ in 0..LATER {
        project().await;
    }
    worker.stop().await;
    // Each order: its items' key checks and its debit's update.
    let scans = scans::counted(&stack.orders, "orders", LATER * 2).await;
    // Expected: every statement found its orders by their ids; none read the table in full.
    assert_eq!(scans.sequential, 0, "{scans:?}");
    assert!(scans.index >= LATER * 2, "{scans:?}");
}
