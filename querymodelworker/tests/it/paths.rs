//! The read model follows every path of the order's state machine.

use order_domain::OrderEvent;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::harness::*;

#[tokio::test]
async fn a_created_order_becomes_a_pending_row_with_its_items_exact_amount_and_trace_id() {
    let stack = Stack::start().await;
    let worker = stack.worker().await;
    let order = created();
    stack
        .append_all(&[OrderEvent::Created(order.clone())])
        .await;

    let row = stack.wait_for_row(order.order_id, 1).await;
    assert_eq!(row.status, "Pending");
    assert_eq!(row.version, 1);
    assert!(!row.refunded);
    assert_eq!(row.reason, None);
    assert_eq!(row.amount, Decimal::new(2530, 2), "2 × 12.50 + 3 × 0.10");
    assert_eq!(row.trace_id.as_deref(), Some(TRACE_ID));

    let items: Vec<(i64, String, String, Decimal, i64)> = sqlx::query_as(
        "SELECT line_no, code, name, unit_price, quantity FROM order_items
          WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order.order_id)
    .fetch_all(&stack.orders)
    .await
    .expect("items");
    assert_eq!(
        items,
        vec![
            (1, "p1".into(), "Pizza".into(), Decimal::new(1250, 2), 2),
            (2, "d1".into(), "Mint".into(), Decimal::new(10, 2), 3),
        ]
    );
    let (created_on,): (time::OffsetDateTime,) =
        sqlx::query_as("SELECT created_on FROM orders WHERE order_id = $1")
            .bind(order.order_id)
            .fetch_one(&stack.orders)
            .await
            .expect("created_on");
    assert_eq!(created_on, order.created_on);
    worker.stop().await;
}

#[tokio::test]
async fn every_path_of_the_state_machine_ends_in_the_right_row() {
    let stack = Stack::start().await;
    let worker = stack.worker().await;
    let approved_order = created();
    let failed_order = created();
    let rejected_order = created();
    let cancelled_order = created();
    let paths: Vec<(Uuid, Vec<OrderEvent>)> = vec![
        (
            approved_order.order_id,
            vec![
                OrderEvent::Created(approved_order.clone()),
                debited(&approved_order),
                approved(&approved_order),
            ],
        ),
        (
            failed_order.order_id,
            vec![
                OrderEvent::Created(failed_order.clone()),
                payment_failed(&failed_order),
            ],
        ),
        (
            rejected_order.order_id,
            vec![
                OrderEvent::Created(rejected_order.clone()),
                debited(&rejected_order),
                rejected(&rejected_order),
                refunded(&rejected_order),
            ],
        ),
        (
            cancelled_order.order_id,
            vec![
                OrderEvent::Created(cancelled_order.clone()),
                cancelled(&cancelled_order),
            ],
        ),
    ];
    for (_, events) in &paths {
        stack.append_all(events).await;
    }

    let row = stack.wait_for_row(approved_order.order_id, 3).await;
    assert_eq!((row.status.as_str(), row.version), ("Approved", 3));
    assert!(!row.refunded);

    let row = stack.wait_for_row(failed_order.order_id, 2).await;
    assert_eq!((row.status.as_str(), row.version), ("PaymentFailed", 2));
    assert_eq!(
        row.reason.as_deref(),
        Some(order_domain::INSUFFICIENT_FUNDS)
    );

    let row = stack.wait_for_row(rejected_order.order_id, 4).await;
    assert_eq!((row.status.as_str(), row.version), ("Rejected", 4));
    assert!(
        row.refunded,
        "the refund is recorded, the status stays final"
    );
    assert_eq!(row.reason.as_deref(), Some("restaurant closed"));

    let row = stack.wait_for_row(cancelled_order.order_id, 2).await;
    assert_eq!((row.status.as_str(), row.version), ("Cancelled", 2));
    assert!(!row.refunded, "nothing was debited, so nothing is refunded");
    assert_eq!(row.reason.as_deref(), Some("changed my mind"));

    // updated_at is the commit time of the last event applied.
    let history = stack
        .store
        .events(&approved_order.order_id.to_string())
        .await
        .expect("history");
    let row = stack
        .row(approved_order.order_id)
        .await
        .expect("row exists");
    assert_eq!(
        row.updated_at.unix_timestamp_nanos() / 1000,
        history[2].created_at.unix_timestamp_nanos() / 1000
    );
    worker.stop().await;
}
