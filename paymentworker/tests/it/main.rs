//! paymentworker against a real PostgreSQL, nats-server and event store: debits, failures,
//! refunds, redeliveries, lost races, dead letters and restarts; and the ledger alone.

mod harness;
mod ledger;
mod payments;

use harness::{Running, Stack};
use order_domain::Money;
use rust_decimal::Decimal;

/// The worker's configuration for this stack.
fn config(stack: &Stack) -> paymentworker::Config {
    let mut config =
        paymentworker::Config::new(stack.nats.url(), &stack.eventstore_url, &stack.payments_url);
    config.worker.timeout_ms = 2000;
    config
}

async fn start_worker(stack: &Stack) -> Running {
    let app = paymentworker::App::build(config(stack))
        .await
        .expect("paymentworker builds");
    Running::spawn(|stopped| app.run_until_stopped(stopped))
}

/// The customer's wallet balance, `None` before the wallet exists.
async fn balance(stack: &Stack, customer: &str) -> Option<Money> {
    let row: Option<(Decimal,)> =
        sqlx::query_as("SELECT balance FROM wallets WHERE customer_id = $1")
            .bind(customer)
            .fetch_optional(&stack.payments)
            .await
            .expect("wallet read");
    row.map(|(balance,)| Money::from_decimal(balance).expect("a balance is money"))
}

/// The recorded payment status of an order.
async fn payment_status(stack: &Stack, order_id: uuid::Uuid) -> Option<String> {
    let row: Option<(String,)> = sqlx::query_as("SELECT status FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&stack.payments)
        .await
        .expect("payment read");
    row.map(|(status,)| status)
}

/// How many events of `event_type` the order has.
async fn count(stack: &Stack, order_id: uuid::Uuid, event_type: &str) -> usize {
    stack
        .history(order_id)
        .await
        .iter()
        .filter(|e| e.event_type == event_type)
        .count()
}
