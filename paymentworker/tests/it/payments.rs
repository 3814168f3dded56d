use std::time::Duration;

use order_domain::{OrderStatus, event_type};
use pipeline_runtime::deadletter;
use pipeline_runtime::stream::EventEnvelope;
use testkit::scans;
use uuid::Uuid;

use crate::harness::{Stack, money};
use crate::{balance, count, payment_status, start_worker};

#[tokio::test]
async fn an_order_within_the_balance_is_debited_once() {
    let stack = Stack::start().await;
    let _worker = start_worker(&stack).await;
    let order_id = stack.place("alice", "120.50").await;

    // Expected: paymentdebited, and the new wallet holds the initial 1000.00 minus the amount.
    let order = stack.wait_for_status(order_id, OrderStatus::Paid).await;
    assert_eq!(order.payment_id, Some(order_domain::payment_id(order_id)));
    stack.wait_idle(paymentworker::NAME).await;
    assert_eq!(balance(&stack, "alice").await, Some(money("879.50")));
    assert_eq!(
        payment_status(&stack, order_id).await.as_deref(),
        Some("debited")
    );
}

#[tokio::test]
async fn an_order_over_the_balance_fails_and_leaves_the_wallet_alone() {
    let stack = Stack::start().await;
    let _worker = start_worker(&stack).await;
    let order_id = stack.place("bob", "1000.01").await;

    // Expected: paymentfailed with the reason, the wallet still at its initial credit.
    let order = stack
        .wait_for_status(order_id, OrderStatus::PaymentFailed)
        .await;
    assert_eq!(
        order.reason.as_deref(),
        Some(order_domain::INSUFFICIENT_FUNDS)
    );
    stack.wait_idle(paymentworker::NAME).await;
    assert_eq!(balance(&stack, "bob").await, Some(money("1000.00")));
    assert_eq!(
        payment_status(&stack, order_id).await.as_deref(),
        Some("failed")
    );
}

#[tokio::test]
async fn orders_of_one_customer_are_each_debited_at_most_once() {
    let stack = Stack::start().await;
    let amounts = ["100.00", "250.00", "300.00", "200.00", "400.00", "75.25"];
    let mut orders = Vec::new();
    for amount in amounts {
        orders.push((stack.place("carol", amount).await, money(amount)));
    }
    // Started after the orders, so they are handled concurrently against one wallet.
    let _worker = start_worker(&stack).await;

    // Expected: every order decided; the balance is 1000 minus exactly the debited amounts.
    let mut debited = 0i64;
    for (order_id, amount) in &orders {
        let order = stack
            .wait_for(*order_id, "decided", |o| o.status != OrderStatus::Pending)
            .await;
        match order.status {
            OrderStatus::Paid => debited += amount.to_cents(),
            OrderStatus::PaymentFailed => {}
            other => panic!("unexpected status {other}"),
        }
        assert!(count(&stack, *order_id, event_type::PAYMENT_DEBITED).await <= 1);
    }
    stack.wait_idle(paymentworker::NAME).await;
    let expected = money("1000.00").to_cents() - debited;
    assert!(expected >= 0, "more was debited than the wallet held");
    assert_eq!(
        balance(&stack, "carol").await.map(|b| b.to_cents()),
        Some(expected)
    );
}

#[tokio::test]
async fn a_created_event_delivered_twice_debits_once() {
    let stack = Stack::start().await;
    let order_id = stack.place("dave", "99.99").await;
    // The same event again under another Nats-Msg-Id, so JetStream keeps both copies.
    let copy = stack.publish_copy_of_last("ORDERS.created").await;
    let _worker = start_worker(&stack).await;

    // Expected: one paymentdebited, one debit of the wallet.
    stack.wait_for_status(order_id, OrderStatus::Paid).await;
    stack.wait_idle_past(paymentworker::NAME, copy).await;
    assert_eq!(
        count(&stack, order_id, event_type::PAYMENT_DEBITED).await,
        1
    );
    assert_eq!(stack.history(order_id).await.len(), 2);
    assert_eq!(balance(&stack, "dave").await, Some(money("900.01")));
}

#[tokio::test]
async fn a_cancelled_paid_order_is_refunded_once() {
    let stack = Stack::start().await;
    let _worker = start_worker(&stack).await;
    let order_id = stack.place("erin", "300.00").await;
    stack.wait_for_status(order_id, OrderStatus::Paid).await;
    stack.cancel(order_id).await;
    // The cancellation delivered twice must not refund twice.
    let copy = stack.publish_copy_of_last("ORDERS.cancelled").await;

    // Expected: paymentrefunded once, the wallet back at 1000.00.
    let order = stack.wait_for(order_id, "refunded", |o| o.refunded).await;
    assert_eq!(order.status, OrderStatus::Cancelled);
    stack.wait_idle_past(paymentworker::NAME, copy).await;
    assert_eq!(
        count(&stack, order_id, event_type::PAYMENT_REFUNDED).await,
        1
    );
    assert_eq!(balance(&stack, "erin").await, Some(money("1000.00")));
    assert_eq!(
        payment_status(&stack, order_id).await.as_deref(),
        Some("refunded")
    );
}

#[tokio::test]
async fn a_cancel_that_wins_the_race_leaves_no_debit() {
    let stack = Stack::start().await;
    // Cancelled before the worker saw the order.
    let raced = stack.place("frank", "50.00").await;
    stack.cancel(raced).await;
    // A previous worker debited this one and stopped before it could append the debit; then the
    // customer cancelled.
    let crashed = stack.place("grace", "70.00").await;
    sqlx::query(
        "INSERT INTO wallets (customer_id, balance, created_at, updated_at) \
         VALUES ('grace', 930.00, now(), now())",
    )
    .execute(&stack.payments)
    .await
    .expect("wallet");
    sqlx::query(
        "INSERT INTO payments (order_id, payment_id, customer_id, amount, status, debit_event_id, \
         created_at, updated_at) VALUES ($1, $2, 'grace', 70.00, 'debited', $3, now(), now())",
    )
    .bind(crashed)
    .bind(order_domain::payment_id(crashed))
    .bind(Uuid::new_v4())
    .execute(&stack.payments)
    .await
    .expect("payment");
    stack.cancel(crashed).await;
    // The same with a failure: a previous worker found the balance short, recorded it and stopped
    // before appending the paymentfailed; then the customer cancelled.
    let failed = stack.place("heidi", "70.00").await;
    sqlx::query(
        "INSERT INTO payments (order_id, payment_id, customer_id, amount, status, debit_event_id, \
         created_at, updated_at) VALUES ($1, $2, 'heidi', 70.00, 'failed', NULL, now(), now())",
    )
    .bind(failed)
    .bind(order_domain::payment_id(failed))
    .execute(&stack.payments)
    .await
    .expect("payment");
    stack.cancel(failed).await;

    let _worker = start_worker(&stack).await;
    stack.wait_idle(paymentworker::NAME).await;

    // Expected: the orders stay Cancelled with no payment event; nobody's wallet is short; the
    // decisions the orders never saw are voided.
    for order_id in [raced, crashed, failed] {
        let order = stack.order(order_id).await;
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(order.version, 2, "nothing was appended");
    }
    let frank = balance(&stack, "frank").await;
    assert!(frank.is_none_or(|m| m == money("1000.00")), "{frank:?}");
    assert_eq!(balance(&stack, "grace").await, Some(money("1000.00")));
    assert_eq!(
        payment_status(&stack, crashed).await.as_deref(),
        Some("voided")
    );
    assert_eq!(
        payment_status(&stack, failed).await.as_deref(),
        Some("voided"),
        "a failure the order never saw is voided too"
    );
    let heidi = balance(&stack, "heidi").await;
    assert!(heidi.is_none_or(|m| m == money("1000.00")), "{heidi:?}");
}

#[tokio::test]
async fn a_message_that_breaks_the_rules_is_dead_lettered_and_the_worker_goes_on() {
    let stack = Stack::start().await;
    let js = stack.jetstream().await;
    // Not JSON at all.
    js.publish("ORDERS.created", "not an event".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    // A well-formed envelope whose data is not a created event.
    let order_id = Uuid::new_v4();
    let bad = EventEnvelope {
        event_id: Uuid::new_v4(),
        event_type: event_type::CREATED.to_owned(),
        aggregate_id: order_id.to_string(),
        aggregate_type: order_domain::AGGREGATE_TYPE.to_owned(),
        aggregate_version: 1,
        stream: "ORDERS".to_owned(),
        event_data: serde_json::json!({ "order_id": order_id, "amount": "lots" }),
        metadata: Default::default(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    js.publish(
        "ORDERS.created",
        serde_json::to_vec(&bad).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let good = stack.place("heidi", "10.00").await;
    let _worker = start_worker(&stack).await;

    // Expected: the good order is paid; both bad messages are in DEADLETTERS.paymentworker.
    stack.wait_for_status(good, OrderStatus::Paid).await;
    let deadline = tokio::time::Instant::now() + stack.patience;
    loop {
        let letters = deadletter::list(&js, Some(paymentworker::NAME))
            .await
            .expect("dead letters listed");
        if letters.len() == 2 {
            assert!(letters.iter().all(|l| l.subject == "ORDERS.created"));
            assert!(letters.iter().any(|l| l.reason.contains("undecodable")));
            let bad_id = bad.event_id.to_string();
            assert!(
                letters
                    .iter()
                    .any(|l| l.event_id.as_deref() == Some(bad_id.as_str()))
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn orders_in_flight_when_the_worker_stops_complete_after_a_restart() {
    // Orders delivered to the stopped worker but not yet in its hand come back after the
    // consumer's ack wait (30 s): patience for that.
    let stack = Stack::start_with_patience(Duration::from_secs(60)).await;
    let customers = ["ivan", "judy", "mallory", "niaj", "olivia", "peggy"];
    let mut orders = Vec::new();
    for customer in customers {
        orders.push((customer, stack.place(customer, "42.00").await));
    }
    // All on the stream before the worker starts, so that its first pull can take them together.
    stack.stream_messages(6).await;
    // Settling a batch writes the wallets: with the table locked, what the worker takes stays in
    // its hand, delivered and unacked.
    let mut lock = stack.payments.begin().await.expect("begin");
    sqlx::query("LOCK TABLE wallets IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("wallets locked");
    let worker = start_worker(&stack).await;
    let js = stack.jetstream().await;
    let deadline = tokio::time::Instant::now() + stack.patience;
    loop {
        let info = js
            .get_stream("ORDERS")
            .await
            .expect("stream")
            .consumer_info(paymentworker::NAME)
            .await
            .expect("consumer info");
        if info.num_ack_pending > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never took an order: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Graceful stop with work in hand: asked to stop while its batch waits on the lock, it cannot
    // be done yet; released, it finishes what it holds, and the rest waits on the consumer.
    let stop = worker.stop();
    tokio::pin!(stop);
    tokio::select! {
        biased;
        () = &mut stop => panic!("the worker stopped with a batch blocked on the wallets"),
        () = std::future::ready(()) => {}
    }
    lock.rollback().await.expect("wallets released");
    stop.await;
    let mut paid = 0;
    for (_, order_id) in &orders {
        if stack.order(*order_id).await.status == OrderStatus::Paid {
            paid += 1;
        }
    }
    assert!(
        paid > 0,
        "the stop finished the batch in hand before it returned: no order is paid"
    );
    let _worker = start_worker(&stack).await;

    // Expected: every order paid once, every wallet debited once.
    for (customer, order_id) in orders {
        stack.wait_for_status(order_id, OrderStatus::Paid).await;
        assert_eq!(
            count(&stack, order_id, event_type::PAYMENT_DEBITED).await,
            1
        );
        stack.wait_idle(paymentworker::NAME).await;
        assert_eq!(balance(&stack, customer).await, Some(money("958.00")));
    }
}

#[tokio::test]
async fn a_debit_whose_commit_was_cut_is_redelivered_and_debits_once() {
    let stack = Stack::start().await;
    let proxy = testkit::CutProxy::to_port(stack.postgres.port())
        .await
        .expect("proxy");
    let mut config = paymentworker::Config::new(
        stack.nats.url(),
        &stack.eventstore_url,
        proxy.url_for(&stack.payments_url),
    );
    config.worker.timeout_ms = 2000;
    // One delivery before a dead letter: only an outage may bring the message back.
    config.worker.max_deliveries = 1;
    let app = paymentworker::App::build(config)
        .await
        .expect("paymentworker builds");
    let _worker = crate::harness::Running::spawn(|stopped| app.run_until_stopped(stopped));
    // The ledger's transaction commits, and the worker never hears it did.
    proxy.arm_commit();
    let order_id = stack.place("trent", "250.00").await;

    // Expected: the redelivery finds the recorded debit and appends paymentdebited; one debit.
    stack.wait_for_status(order_id, OrderStatus::Paid).await;
    assert_eq!(proxy.cuts(), 1, "the ledger's COMMIT was cut");
    stack.wait_idle(paymentworker::NAME).await;
    assert_eq!(balance(&stack, "trent").await, Some(money("750.00")));
    assert_eq!(
        count(&stack, order_id, event_type::PAYMENT_DEBITED).await,
        1
    );
    assert_eq!(
        payment_status(&stack, order_id).await.as_deref(),
        Some("debited")
    );
}

/// The worker's connections plan each statement once (a keyed pool). Planned while the tables were
/// analyzed empty, which makes PostgreSQL's generic plans of the batch statements sequential scans,
/// a payment still finds its wallet by the customer's key once `wallets` holds many rows.
#[tokio::test]
async fn a_payment_planned_on_an_analyzed_empty_table_reads_it_by_index_as_it_grows() {
    let stack = Stack::start().await;
    scans::statistics_say_empty(&stack.payments, &["wallets", "payments"]).await;
    let worker = start_worker(&stack).await;
    let pay = async |customer: String| {
        let order_id = stack.place(&customer, "10.00").await;
        stack.wait_for_status(order_id, OrderStatus::Paid).await;
    };
    // Planned now, on the empty tables.
    pay("first".to_owned()).await;
    // The table grows, and its statistics still say it is empty.
    sqlx::query(
        "INSERT INTO wallets (customer_id, balance, created_at, updated_at) \
         SELECT 'bulk-' || n, 1000, now(), now() FROM generate_series(1, 20000) AS n",
    )
    .execute(&stack.payments)
    .await
    .expect("wallets inserted");
    scans::count_from_now(&stack.payments, "wallets").await;
    const LATER: i64 = 3;
    for n in 0..LATER {
        pay(format!("later-{n}")).await;
    }
    stack.wait_idle(paymentworker::NAME).await;
    worker.stop().await;
    let scans = scans::counted(&stack.payments, "wallets", LATER).await;
    // Expected: every statement found its wallet by the customer; none read the table in full.
    assert_eq!(scans.sequential, 0, "{scans:?}");
    assert!(scans.index >= LATER, "{scans:?}");
}
