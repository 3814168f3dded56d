//! The payments ledger alone, on a real paymentsdb: a batch decided by two instances at once, and
//! a batch whose payments are recorded already.

use order_domain::{Money, Order, OrderStatus};
use paymentworker::ledger::{self, Decision, ToSettle};
use uuid::Uuid;

use super::{balance, payment_status};
use crate::harness::{PAYMENTS, Stack, money};

/// A Pending order of `customer` for `amount`, with the id its debit event would get.
fn to_settle(customer: &str, amount: &str) -> ToSettle {
    ToSettle {
        order: Order {
            order_id: Uuid::new_v4(),
            customer_id: customer.to_owned(),
            restaurant_id: "r1".to_owned(),
            items: Vec::new(),
            amount: money(amount),
            status: OrderStatus::Pending,
            version: 1,
            payment_id: None,
            refunded: false,
            created_on: time::OffsetDateTime::now_utc(),
            reason: None,
        },
        debit_event_id: Uuid::new_v4(),
    }
}

fn decisions(outcome: Vec<Result<Decision, ledger::LedgerError>>) -> Vec<Decision> {
    outcome
        .into_iter()
        .map(|decision| decision.expect("a decision"))
        .collect()
}

#[tokio::test]
async fn two_instances_settling_one_batch_at_once_decide_each_order_once() {
    let stack = Stack::start().await;
    let credit: Money = money("1000.00");
    let other = stack.pool(PAYMENTS).await;
    // Two customers' orders; erin's last one is over what is left of her wallet.
    let orders = [
        ("erin", "400.00"),
        ("frank", "10.00"),
        ("erin", "500.00"),
        ("erin", "200.00"),
    ];

    // Expected, in each of five rounds: both calls return the same decisions, whichever of them
    // recorded them; every order has one payment row; each wallet lost the debited amounts once.
    for round in 1..=5 {
        let batch: Vec<ToSettle> = orders
            .iter()
            .map(|(customer, amount)| to_settle(customer, amount))
            .collect();
        let (first, second) = tokio::join!(
            ledger::settle_batch(&stack.payments, &batch, credit),
            ledger::settle_batch(&other, &batch, credit),
        );
        let first = decisions(first.expect("the first instance settles"));
        let second = decisions(second.expect("the second instance settles"));
        assert_eq!(
            first, second,
            "round {round}: both report the recorded decisions"
        );
        for settle in &batch {
            assert!(
                payment_status(&stack, settle.order.order_id)
                    .await
                    .is_some()
            );
        }
    }
    // erin: 1000 - 400 - 500 in round 1 (200 fails), then 100 covers none of her orders;
    // frank: 1000 - 5 × 10.
    assert_eq!(balance(&stack, "erin").await, Some(money("100.00")));
    assert_eq!(balance(&stack, "frank").await, Some(money("950.00")));
}

#[tokio::test]
async fn a_batch_recorded_before_is_answered_from_the_records_and_moves_no_money() {
    let stack = Stack::start().await;
    let credit: Money = money("100.00");
    let batch = vec![to_settle("gina", "60.00"), to_settle("gina", "60.00")];
    let first = decisions(
        ledger::settle_batch(&stack.payments, &batch, credit)
            .await
            .expect("settled"),
    );
    assert_eq!(first, vec![Decision::Debited, Decision::Failed]);

    // Expected: the same batch again (a redelivery) gets the recorded decisions, and the wallet
    // is not debited again; a batch of a new order and a recorded one decides only the new one.
    let again = decisions(
        ledger::settle_batch(&stack.payments, &batch, credit)
            .await
            .expect("settled again"),
    );
    assert_eq!(again, first);
    assert_eq!(balance(&stack, "gina").await, Some(money("40.00")));

    let mixed = vec![to_settle("gina", "40.00"), batch[0].clone()];
    let decided = decisions(
        ledger::settle_batch(&stack.payments, &mixed, credit)
            .await
            .expect("settled"),
    );
    assert_eq!(decided, vec![Decision::Debited, Decision::Debited]);
    assert_eq!(balance(&stack, "gina").await, Some(money("0.00")));
}

#[tokio::test]
async fn two_instances_paying_one_customer_at_once_lose_no_debit() {
    let stack = Stack::start().await;
    let credit: Money = money("1000.00");
    let other = stack.pool(PAYMENTS).await;

    // Expected: the wallet ends at the credit minus exactly the debits both instances report
    // (each batch reads the balance the other left, never a stale one), and never below zero.
    let mut debited = 0i64;
    for _ in 0..12 {
        let ours: Vec<ToSettle> = (0..3).map(|_| to_settle("hank", "30.00")).collect();
        let theirs: Vec<ToSettle> = (0..3).map(|_| to_settle("hank", "20.00")).collect();
        let (first, second) = tokio::join!(
            ledger::settle_batch(&stack.payments, &ours, credit),
            ledger::settle_batch(&other, &theirs, credit),
        );
        for (batch, outcome) in [(&ours, first), (&theirs, second)] {
            let outcome = decisions(outcome.expect("settled"));
            for (settle, decision) in batch.iter().zip(outcome) {
                if decision == Decision::Debited {
                    debited += settle.order.amount.to_cents();
                }
            }
        }
    }
    assert_eq!(
        balance(&stack, "hank").await.map(|b| b.to_cents()),
        Some(credit.to_cents() - debited)
    );
}
