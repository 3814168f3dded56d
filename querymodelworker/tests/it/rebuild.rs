//! Rebuilding the read model from the event store.

use order_domain::OrderEvent;

use crate::harness::*;

#[tokio::test]
async fn a_rebuild_into_a_fresh_database_equals_the_live_read_model_row_for_row() {
    let stack = Stack::start().await;
    let worker = stack.worker().await;
    let a = created();
    let b = created();
    let c = created();
    stack
        .append_all(&[OrderEvent::Created(a.clone()), debited(&a), approved(&a)])
        .await;
    stack
        .append_all(&[
            OrderEvent::Created(b.clone()),
            debited(&b),
            rejected(&b),
            refunded(&b),
        ])
        .await;
    stack.append_all(&[OrderEvent::Created(c.clone())]).await;
    stack.wait_for_row(a.order_id, 3).await;
    stack.wait_for_row(b.order_id, 4).await;
    stack.wait_for_row(c.order_id, 1).await;
    worker.stop().await;

    let fresh = stack.postgres.fresh_database().await.expect("fresh db");
    ORDERS.migrate(&fresh).await;
    let mut config = stack.config();
    config.orders_database_url = fresh.clone().into();
    let report = querymodelworker::rebuild(&config).await.expect("rebuilds");
    assert_eq!(report.events, 8);
    assert_eq!(report.applied, 8);
    assert_eq!(report.orders, 3);
    assert!(report.refused.is_empty(), "{report:?}");

    let rebuilt_pool = sqlx::PgPool::connect(&fresh).await.expect("connect");
    let live = dump(&stack.orders).await;
    let rebuilt = dump(&rebuilt_pool).await;
    assert_eq!(live.0.len(), 3);
    assert_eq!(live.1.len(), 6);
    assert_eq!(rebuilt, live);

    // Rebuilding again (into a database that is not empty) gives the same model.
    let again = querymodelworker::rebuild(&config).await.expect("rebuilds");
    assert_eq!(again.orders, 3);
    assert_eq!(dump(&rebuilt_pool).await, live);
}
