//! The chaos run's load: orders at a steady rate (the pace and orders `orderctl load` uses too,
//! from `orders-load`, with the chaos mix, sent through its API client), each posted as a careful
//! client does (one `Idempotency-Key` per order, the same body and key again after a transport
//! error, a 5xx or a 429, with capped exponential backoff and jitter, up to a deadline), and about
//! one in ten cancelled a moment after it was accepted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use orders_load::Rate;
use orders_load::api::{ApiClient, ApiError};
use orders_load::orders::{self, Mix};
use orders_load::pace::{self, Pace};
use pipeline_runtime::backoff::{Backoff, Jitter};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many unexpected answers the report quotes.
const EXAMPLES: usize = 5;

pub(crate) struct LoadConfig {
    pub base_url: String,
    /// The bearer token of every request (an operator's: the load places orders for many
    /// customers).
    pub token: Option<String>,
    pub rate: f64,
    pub customers: u32,
    pub seed: u64,
    /// How long one request is retried before the client gives up.
    pub deadline: Duration,
    /// Share of accepted orders the client tries to cancel.
    pub cancel_share: f64,
}

/// What an order is meant to exercise, with wallets of 1000.00 and a review limit of 500.00
/// ([`Mix::CHAOS`]).
pub use orders_load::orders::Kind;

/// An order the pipeline accepted (a 2xx to its POST).
#[derive(Debug, Clone)]
pub struct PlacedOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount: Decimal,
    pub kind: Kind,
}

/// What the clients saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadStats {
    /// Orders the generator started.
    pub offered: u64,
    /// Orders that got a 2xx.
    pub accepted: u64,
    /// POST attempts after the first one of an order.
    pub retried_requests: u64,
    /// Orders that needed at least one retry.
    pub retried_orders: u64,
    /// Orders whose POST was still failing at the deadline.
    pub gave_up: u64,
    /// Every answer to a POST: the status code, or the kind of transport error.
    pub post_answers: BTreeMap<String, u64>,
    pub cancels: CancelStats,
    /// Answers no correct pipeline gives to these requests (a 4xx other than 429, a 2xx without
    /// an order id, a 404 to a cancel of an accepted order).
    pub unexpected: u64,
    pub unexpected_examples: Vec<String>,
    /// Longest time from an order's first POST to its 2xx.
    pub longest_accept_seconds: f64,
    #[serde(skip)]
    pub placed: Vec<PlacedOrder>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CancelStats {
    pub requested: u64,
    /// 200: the order was cancelled.
    pub cancelled: u64,
    /// 409: too late, the order had moved on.
    pub too_late: u64,
    pub retried_requests: u64,
    pub gave_up: u64,
    pub answers: BTreeMap<String, u64>,
}

impl LoadStats {
    fn unexpected(&mut self, what: String) {
        self.unexpected += 1;
        if self.unexpected_examples.len() < EXAMPLES {
            self.unexpected_examples.push(what);
        }
    }
}

type Shared = Arc<Mutex<LoadStats>>;

fn record(stats: &Shared, update: impl FnOnce(&mut LoadStats)) {
    // Every update is a few plain assignments: a panic cannot leave the stats half-written.
    update(&mut stats.lock().unwrap_or_else(PoisonError::into_inner));
}

/// One order as the generator made it.
struct Generated {
    key: String,
    body: Value,
    customer_id: String,
    amount: Decimal,
    kind: Kind,
    cancel_after: Option<Duration>,
}

/// Offers orders until `stop` is cancelled, then waits for every order's requests to end (each
/// bounded by the deadline).
pub(crate) async fn run(config: LoadConfig, stop: CancellationToken) -> anyhow::Result<LoadStats> {
    let api = ApiClient::with_token(&config.base_url, config.token.as_deref())
        .context("the API's URL")?;
    let shared: Shared = Arc::default();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let progress = tokio::spawn(log_progress(Arc::clone(&shared)));
    let pace = Pace {
        rate: Rate::PerSecond(config.rate),
        // Every order in hand at once: a slow answer must not slow the offered rate.
        concurrency: usize::MAX,
        stop: None,
    };
    let offered = pace::offer(pace, &stop, |n| {
        let order = generate(&mut rng, &config, n);
        let api = api.clone();
        let shared = Arc::clone(&shared);
        let deadline = config.deadline;
        record(&shared, |s| s.offered = n);
        async move {
            let accepted = place(&api, &order, deadline, &shared).await;
            if let (Some(order_id), Some(delay)) = (accepted, order.cancel_after) {
                tokio::time::sleep(delay).await;
                cancel(&api, order_id, deadline, &shared).await;
            }
        }
    })
    .await;
    progress.abort();
    record(&shared, |s| {
        s.offered = offered.sent;
        for error in offered.panicked {
            s.unexpected(format!("an order's task failed: {error}"));
        }
    });
    let stats = shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(stats)
}

/// Every 15 s, how far the load is.
async fn log_progress(shared: Shared) {
    let mut every = tokio::time::interval(Duration::from_secs(15));
    every.tick().await;
    loop {
        every.tick().await;
        let stats = shared.lock().unwrap_or_else(PoisonError::into_inner);
        tracing::info!(
            offered = stats.offered,
            accepted = stats.accepted,
            retried = stats.retried_requests,
            "chaos: load"
        );
    }
}

fn generate(rng: &mut StdRng, config: &LoadConfig, n: u64) -> Generated {
    let order = orders::generate(rng, &Mix::CHAOS, "chaos", config.customers);
    let cancel_after = rng
        .random_bool(config.cancel_share.clamp(0.0, 1.0))
        // Soon enough that some orders are still Pending or Paid (a paid one is then refunded).
        .then(|| Duration::from_millis(rng.random_range(0..=250)));
    Generated {
        key: format!("chaos-{:x}-{n}", config.seed),
        body: order.body,
        customer_id: order.customer_id,
        amount: Decimal::new(i64::try_from(order.amount_cents).unwrap_or(i64::MAX), 2),
        kind: order.kind,
        cancel_after,
    }
}

/// An answer's label in the report's counts: `HTTP 201`, `HTTP 503`, `network`, `timeout`, ….
fn label<T>(answer: &Result<T, ApiError>, success: u16) -> String {
    match answer {
        Ok(_) => format!("HTTP {success}"),
        Err(error) => error.kind(),
    }
}

/// The wait before the next attempt: the backoff, never less than the server's `Retry-After`
/// (taken up to 10 s).
fn wait_before(attempt: u32, error: &ApiError) -> Duration {
    let retry_after = error
        .retry_after()
        .map(|asked| asked.min(Duration::from_secs(10)));
    BACKOFF.delay_after(attempt, retry_after)
}

/// 100 ms doubling up to 5 s, plus up to half of it at random so that clients cut off together do
/// not come back together; never less than the server's `Retry-After`.
const BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(5),
    Jitter::Half,
);

/// POSTs the order until it is accepted, refused for good, or the deadline passes; the order id
/// when accepted.
async fn place(
    api: &ApiClient,
    order: &Generated,
    deadline: Duration,
    shared: &Shared,
) -> Option<Uuid> {
    let first = Instant::now();
    let give_up_at = first + deadline;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let answer = api.place(&order.body, Some(&order.key)).await;
        let label = label(&answer, 201);
        record(shared, |s| *s.post_answers.entry(label).or_default() += 1);
        match answer {
            Ok(created) => {
                let took = first.elapsed().as_secs_f64();
                record(shared, |s| {
                    s.accepted += 1;
                    s.longest_accept_seconds = s.longest_accept_seconds.max(took);
                    s.placed.push(PlacedOrder {
                        order_id: created.order_id,
                        customer_id: order.customer_id.clone(),
                        amount: order.amount,
                        kind: order.kind,
                    });
                });
                return Some(created.order_id);
            }
            Err(error) if error.is_retryable() => {
                let wait = wait_before(attempt, &error);
                if Instant::now() + wait > give_up_at {
                    record(shared, |s| s.gave_up += 1);
                    return None;
                }
                record(shared, |s| {
                    s.retried_requests += 1;
                    if attempt == 1 {
                        s.retried_orders += 1;
                    }
                });
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                record(shared, |s| {
                    s.unexpected(format!("POST {}: {error}", order.key))
                });
                return None;
            }
        }
    }
}

/// Cancels an accepted order: 200 and 409 are both answers a client takes; 5xx, 429 and transport
/// errors are retried up to the deadline.
async fn cancel(api: &ApiClient, order_id: Uuid, deadline: Duration, shared: &Shared) {
    record(shared, |s| s.cancels.requested += 1);
    let give_up_at = Instant::now() + deadline;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let answer = api.cancel(order_id, Some("chaos: changed my mind")).await;
        let label = label(&answer, 200);
        record(shared, |s| {
            *s.cancels.answers.entry(label).or_default() += 1
        });
        match answer {
            Ok(_) => {
                record(shared, |s| s.cancels.cancelled += 1);
                return;
            }
            Err(ApiError::Status { status: 409, .. }) => {
                record(shared, |s| s.cancels.too_late += 1);
                return;
            }
            Err(error) if error.is_retryable() => {
                let wait = wait_before(attempt, &error);
                if Instant::now() + wait > give_up_at {
                    record(shared, |s| s.cancels.gave_up += 1);
                    return;
                }
                record(shared, |s| s.cancels.retried_requests += 1);
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                record(shared, |s| {
                    s.unexpected(format!("cancel {order_id}: {error}"))
                });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> LoadConfig {
        LoadConfig {
            base_url: String::new(),
            token: None,
            rate: 1.0,
            customers: 50,
            seed,
            deadline: Duration::from_secs(1),
            cancel_share: 0.1,
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_orders() {
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        for n in 1..50 {
            let (x, y) = (
                generate(&mut a, &config(7), n),
                generate(&mut b, &config(7), n),
            );
            assert_eq!(x.body, y.body, "order {n}");
            assert_eq!(x.key, y.key, "order {n}");
        }
    }

    #[test]
    fn the_amount_is_the_exact_sum_of_the_lines_and_each_kind_stays_in_its_range() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in 1..500 {
            let order = generate(&mut rng, &config(1), n);
            let sum: Decimal = order.body["order_items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|item| {
                    let price: Decimal = item["unit_price"]
                        .as_str()
                        .and_then(|p| p.parse().ok())
                        .expect("a decimal price");
                    price * Decimal::from(item["quantity"].as_u64().expect("a quantity"))
                })
                .sum();
            assert_eq!(sum, order.amount, "{}", order.body);
            let (low, high) = match order.kind {
                Kind::Small => (Decimal::new(500, 2), Decimal::new(36_000, 2)),
                Kind::OverReviewLimit => (Decimal::new(50_001, 2), Decimal::new(90_000, 2)),
                Kind::OverCredit => (Decimal::new(100_001, 2), Decimal::new(150_000, 2)),
            };
            assert!(
                (low..=high).contains(&order.amount),
                "{:?} of {}",
                order.kind,
                order.amount
            );
        }
    }
}
