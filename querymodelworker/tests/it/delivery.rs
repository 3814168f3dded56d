//! Redeliveries, gaps and events the state machine refuses.

use async_nats::HeaderMap;
use order_domain::OrderEvent;
use pipeline_runtime::{deadletter, stream::headers};

use crate::harness::*;

#[tokio::test]
async fn the_same_event_delivered_twice_is_applied_once() {
    let stack = Stack::start().await;
    let worker = stack.worker().await;
    let order = created();
    stack
        .append_all(&[OrderEvent::Created(order.clone()), debited(&order)])
        .await;
    let before = stack.wait_for_row(order.order_id, 2).await;
    stack.wait_until_consumed().await;

    // A copy of every event of the order, under another Nats-Msg-Id so JetStream keeps it.
    let js = stack.jetstream().await;
    for message in stack.stream_messages(2).await {
        let mut copy: HeaderMap = message.headers.clone();
        copy.insert(
            headers::MSG_ID,
            format!("copy-{}", message.sequence).as_str(),
        );
        js.publish_with_headers(message.subject.to_string(), copy, message.payload.clone())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    stack.stream_messages(4).await;
    stack.wait_until_consumed().await;

    let after = stack.row(order.order_id).await.expect("row exists");
    assert_eq!(after, before, "the copies changed nothing");
    let items: (i64,) = sqlx::query_as("SELECT count(*) FROM order_items WHERE order_id = $1")
        .bind(order.order_id)
        .fetch_one(&stack.orders)
        .await
        .expect("count");
    assert_eq!(items.0, 2, "the items were inserted once");
    let letters = deadletter::list(&js, Some("querymodelworker"))
        .await
        .expect("list");
    assert!(
        letters.is_empty(),
        "duplicates are acked, not dead-lettered"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_gap_is_filled_from_the_event_store() {
    let stack = Stack::start().await;
    let worker = stack.worker().await;
    let order = created();
    stack.append(&OrderEvent::Created(order.clone()), 0).await;
    stack.wait_for_row(order.order_id, 1).await;
    stack.wait_until_consumed().await;
    worker.stop().await;

    // Versions 2 and 3 are published while the worker is away; version 2 is then lost.
    stack.append(&debited(&order), 1).await;
    stack.append(&approved(&order), 2).await;
    let messages = stack.stream_messages(3).await;
    let lost = messages
        .iter()
        .find(|m| envelope(m).aggregate_version == 2)
        .expect("version 2 on the stream");
    let js = stack.jetstream().await;
    let removed = js
        .get_stream("ORDERS")
        .await
        .expect("stream")
        .delete_message(lost.sequence)
        .await
        .expect("delete");
    assert!(removed);

    let worker = stack.worker().await;
    let row = stack.wait_for_row(order.order_id, 3).await;
    assert_eq!((row.status.as_str(), row.version), ("Approved", 3));
    worker.stop().await;
}

#[tokio::test]
async fn an_event_the_state_machine_refuses_is_dead_lettered_and_the_worker_goes_on() {
    let stack = Stack::start().await;
    let worker = stack.worker().await;
    let order = created();
    stack.append(&OrderEvent::Created(order.clone()), 0).await;
    stack.wait_for_row(order.order_id, 1).await;
    // `approved` for a Pending order: the event store takes it (it knows no rules), the read model
    // must not.
    let refused = stack.append(&approved(&order), 1).await;

    let js = stack.jetstream().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let letter = loop {
        let letters = deadletter::list(&js, Some("querymodelworker"))
            .await
            .expect("list");
        if let Some(letter) = letters.into_iter().next() {
            break letter;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(letter.event_id, Some(refused.to_string()));
    assert_eq!(letter.subject, "ORDERS.approved");
    assert_eq!(letter.deliveries, "1", "refused at once, not retried");
    assert!(letter.reason.contains("Pending"), "{}", letter.reason);

    let row = stack.row(order.order_id).await.expect("row exists");
    assert_eq!((row.status.as_str(), row.version), ("Pending", 1));

    let next = created();
    stack.append(&OrderEvent::Created(next.clone()), 0).await;
    let row = stack.wait_for_row(next.order_id, 1).await;
    assert_eq!(row.status, "Pending", "the worker keeps going");
    worker.stop().await;
}

#[tokio::test]
async fn concurrent_deliveries_of_one_orders_events_in_any_order_end_in_the_same_row() {
    let stack = Stack::start().await;
    let order = created();
    stack
        .append_all(&[
            OrderEvent::Created(order.clone()),
            debited(&order),
            rejected(&order),
            refunded(&order),
        ])
        .await;
    let history = stack
        .store
        .events(&order.order_id.to_string())
        .await
        .expect("history");
    let projector = querymodelworker::Projector::new(stack.orders.clone(), stack.store.clone());

    // Every event three times, newest first, all at once: races on the insert, on the update and
    // gap fills that overlap, at SERIALIZABLE.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        for envelope in history.iter().rev().cloned() {
            let projector = projector.clone();
            tasks.spawn(async move { projector.project(envelope).await });
        }
    }
    let mut applied = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        match outcome.expect("joins").expect("projected") {
            querymodelworker::Outcome::Applied { from, to } => applied.push((from, to)),
            querymodelworker::Outcome::Duplicate { .. } => {}
        }
    }
    // The applied steps chain from 0 to 4 without overlap: each event took effect exactly once.
    applied.sort_unstable();
    let mut at = 0;
    for (from, to) in &applied {
        assert_eq!(*from, at, "{applied:?}");
        at = *to;
    }
    assert_eq!(at, 4, "{applied:?}");

    let row = stack.row(order.order_id).await.expect("row exists");
    assert_eq!(
        (row.status.as_str(), row.version, row.refunded),
        ("Rejected", 4, true)
    );
    let (items,): (i64,) = sqlx::query_as("SELECT count(*) FROM order_items WHERE order_id = $1")
        .bind(order.order_id)
        .fetch_one(&stack.orders)
        .await
        .expect("count");
    assert_eq!(items, 2);
}
