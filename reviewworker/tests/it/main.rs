//! reviewworker against a real nats-server and event store (on a real PostgreSQL): approvals,
//! rejections, a lost race with a cancellation, redeliveries.

mod review;

use pipeline_harness::{Running, Stack};

fn config(stack: &Stack) -> reviewworker::Config {
    let mut config = reviewworker::Config::new(stack.nats.url(), &stack.eventstore_url);
    config.worker.timeout_ms = 2000;
    config
}

async fn start_worker(config: reviewworker::Config) -> Running {
    let app = reviewworker::App::build(config)
        .await
        .expect("reviewworker builds");
    Running::spawn(|stopped| app.run_until_stopped(stopped))
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
