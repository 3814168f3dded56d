use std::time::Duration;

use order_domain::{OrderStatus, event_type};
use tokio::sync::watch;

use crate::{config, count, start_worker};
use pipeline_harness::Stack;

#[tokio::test]
async fn paid_orders_up_to_the_limit_are_approved_and_above_it_rejected() {
    let stack = Stack::start().await;
    let _worker = start_worker(config(&stack)).await;
    let at_limit = stack.place("alice", "500.00").await;
    let over_limit = stack.place("bob", "500.01").await;
    stack.debit(at_limit).await;
    stack.debit(over_limit).await;

    // Expected: 500.00 (the default REVIEW_MAX_AMOUNT) is approved; 500.01 is rejected, saying why.
    let approved = stack.wait_for_status(at_limit, OrderStatus::Approved).await;
    assert_eq!(approved.version, 3);
    let rejected = stack
        .wait_for_status(over_limit, OrderStatus::Rejected)
        .await;
    let reason = rejected.reason.expect("a rejection has a reason");
    assert!(
        reason.contains("500.01") && reason.contains("500.00"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_order_cancelled_while_its_review_is_held_stays_cancelled() {
    let stack = Stack::start().await;
    let (hold, held) = watch::channel(true);
    let mut config = config(&stack);
    config.hold = Some(held);
    let _worker = start_worker(config).await;
    let order_id = stack.place("carol", "20.00").await;
    stack.debit(order_id).await;

    // Wait until the worker holds the paymentdebited message, then cancel under its feet.
    let js = stack.jetstream().await;
    let deadline = tokio::time::Instant::now() + stack.patience;
    loop {
        let stream = js.get_stream("ORDERS").await.expect("stream");
        let info = stream
            .consumer_info(reviewworker::NAME)
            .await
            .expect("consumer info");
        if info.num_ack_pending > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never delivered: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.cancel(order_id).await;
    hold.send(false).expect("worker listens");

    // Expected: the review finds a Cancelled order and appends nothing.
    stack.wait_idle(reviewworker::NAME).await;
    let order = stack.order(order_id).await;
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(
        order.version, 3,
        "created, paymentdebited, cancelled and nothing else"
    );
}

#[tokio::test]
async fn a_paymentdebited_delivered_twice_is_approved_once() {
    let stack = Stack::start().await;
    let order_id = stack.place("dave", "42.00").await;
    stack.debit(order_id).await;
    // The same event again under another Nats-Msg-Id, so JetStream keeps both copies.
    let copy = stack.publish_copy_of_last("ORDERS.paymentdebited").await;
    let worker = start_worker(config(&stack)).await;

    // Expected: one approved event.
    stack.wait_for_status(order_id, OrderStatus::Approved).await;
    stack.wait_idle_past(reviewworker::NAME, copy).await;
    assert_eq!(count(&stack, order_id, event_type::APPROVED).await, 1);
    assert_eq!(stack.history(order_id).await.len(), 3);
    // And the worker stops cleanly when asked.
    worker.stop().await;
}

#[tokio::test]
async fn a_batch_with_a_duplicate_a_conflict_and_a_poison_message_settles_each_on_its_own() {
    let stack = Stack::start().await;
    // Everything is on the stream before the worker starts: its first pull takes it all together.
    let fine = stack.place("erin", "30.00").await;
    stack.debit(fine).await;
    // The same debit again under another Nats-Msg-Id: a duplicate within the batch.
    stack.publish_copy_of_last("ORDERS.paymentdebited").await;
    // Debited at version 2, then cancelled: the review decided on version 2 conflicts.
    let raced = stack.place("frank", "40.00").await;
    stack.debit(raced).await;
    stack.cancel(raced).await;
    let js = stack.jetstream().await;
    js.publish("ORDERS.paymentdebited", "not an event".into())
        .await
        .expect("publish")
        .await
        .expect("stream ack");
    // 2 created, 2 debits and the copy, 1 cancelled, the poison message.
    stack.stream_messages(7).await;
    let worker = start_worker(config(&stack)).await;
    stack.wait_idle(reviewworker::NAME).await;

    // Expected: the good order is approved once, the copy of its debit adding nothing.
    assert_eq!(count(&stack, fine, event_type::APPROVED).await, 1);
    assert_eq!(stack.order(fine).await.status, OrderStatus::Approved);
    // Expected: the conflict is settled on the history: the order stays Cancelled, nothing added.
    let order = stack.order(raced).await;
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(
        stack.history(raced).await.len(),
        3,
        "created, debited, cancelled"
    );
    // Expected: the poison message, and only it, is a dead letter; everything else was acked.
    let letters = js
        .get_stream("DEADLETTERS")
        .await
        .expect("dead-letter stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages;
    assert_eq!(letters, 1, "only the poison message is a dead letter");
    worker.stop().await;
}
