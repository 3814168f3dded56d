//! A steady load of orders from a client that retries as a careful user would (the same
//! `Idempotency-Key` on a 5xx or a network error), and the checks that follow a fault under it:
//! every accepted order final, the event store and the stream in agreement, no effect doubled.
//! The NATS cluster test and the database failover tests share them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use e2e_tests::{Pipeline, order_body};
use futures::StreamExt as _;
use rust_decimal::Decimal;

/// Every tenth order is above the review limit: Rejected, then refunded.
const BIG_EVERY: usize = 10;

/// One try of a POST: when it was sent, when it ended, and its HTTP status (`None`: a network
/// error or a timeout).
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub sent: Instant,
    pub answered: Instant,
    pub ok: bool,
    pub status: Option<u16>,
    /// The answer said when to come back (`Retry-After`).
    pub retry_after: bool,
}

/// One POSTed order: its key, its customer, whether it must end Rejected, every try and how the
/// POST ended (the order id, or why not).
#[derive(Debug)]
pub struct Offered {
    pub key: String,
    pub customer: String,
    pub big: bool,
    pub attempts: Vec<Attempt>,
    pub outcome: Result<String, String>,
}

/// POSTs an order under `key` (600.00 when `big`, else 10.00) until a 2xx (the order id) or a
/// 4xx, retrying 5xx answers and transport errors with the same key for at most `deadline`.
async fn post_with_retries(
    http: reqwest::Client,
    url: String,
    key: String,
    customer: String,
    big: bool,
    deadline: Duration,
) -> Offered {
    let give_up = Instant::now() + deadline;
    let price = if big { "600.00" } else { "10.00" };
    let body = order_body(&customer, price, 1);
    let mut attempts = Vec::new();
    let outcome = loop {
        let sent = Instant::now();
        let answer = http
            .post(&url)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        let status = answer.as_ref().ok().map(|r| r.status().as_u16());
        attempts.push(Attempt {
            sent,
            answered: Instant::now(),
            ok: status.is_some_and(|s| (200..300).contains(&s)),
            status,
            retry_after: answer
                .as_ref()
                .is_ok_and(|r| r.headers().contains_key("retry-after")),
        });
        let last = match answer {
            Ok(response) if response.status().is_success() => {
                let json: serde_json::Value = response.json().await.unwrap_or_default();
                match json["order_id"].as_str() {
                    Some(id) => break Ok(id.to_owned()),
                    None => format!("a 2xx without an order id: {json}"),
                }
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                break Err(format!(
                    "{status}: {}",
                    response.text().await.unwrap_or_default()
                ));
            }
            Ok(response) => format!("{}", response.status()),
            Err(error) => format!("{error}"),
        };
        if Instant::now() >= give_up {
            break Err(format!("no 2xx within {deadline:?}; last {last}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    Offered {
        key,
        customer,
        big,
        attempts,
        outcome,
    }
}

/// A load running in the background: one POST every 1/`rate` s, each in its own task (a slow
/// answer does not slow the rate).
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Offered>>,
}

impl Load {
    /// Starts offering orders to `pipeline` at `rate` per second, each POST retried for at most
    /// `post_deadline`.
    pub fn start(pipeline: &Pipeline, rate: u64, post_deadline: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{}/api/orders", pipeline.base_url());
        let http = pipeline.http.clone();
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1)));
            let mut posts = Vec::new();
            let run = uuid::Uuid::new_v4();
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = posts.len();
                // A big order has a customer of its own, so its debit never meets an empty
                // wallet; the others share 20 wallets, far from empty at 10.00 an order.
                let big = n % BIG_EVERY == BIG_EVERY - 1;
                let customer = if big {
                    format!("big-{run}-{n}")
                } else {
                    format!("c-{run}-{}", n % 20)
                };
                posts.push(tokio::spawn(post_with_retries(
                    http.clone(),
                    url.clone(),
                    format!("steady-{run}-{n}"),
                    customer,
                    big,
                    post_deadline,
                )));
            }
            let mut offered = Vec::with_capacity(posts.len());
            for post in posts {
                offered.push(post.await.expect("a POST task panicked"));
            }
            offered
        });
        Load { stop, task }
    }

    /// Stops offering and waits for every POST in flight to end.
    pub async fn stop(self) -> Vec<Offered> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the load task")
    }
}

/// What the client saw of a fault: how many tries failed (5xx or network error), and the write
/// outage: the longest time between two consecutive 2xx answers while the load ran (about 1/rate
/// when nothing stops writes, whether the POSTs in between failed or hung).
#[derive(Debug, Default)]
pub struct Seen {
    pub tries: usize,
    pub failed: usize,
    /// Failed tries answered with something else than a 503 with `Retry-After` (a 500, say):
    /// each is a bug. Tries by status.
    pub unexpected: std::collections::BTreeMap<u16, usize>,
    pub outage: Duration,
    /// The slowest try that was answered 2xx.
    pub slowest_ok: Duration,
    /// 99th percentile over the accepted orders of first try → 2xx, retries included.
    pub p99: Duration,
}

pub fn seen(offered: &[Offered]) -> Seen {
    let attempts: Vec<Attempt> = offered
        .iter()
        .flat_map(|o| o.attempts.iter().copied())
        .collect();
    let mut answered: Vec<Instant> = attempts
        .iter()
        .filter(|a| a.ok)
        .map(|a| a.answered)
        .collect();
    answered.sort();
    let mut accepted: Vec<Duration> = offered
        .iter()
        .filter(|o| o.outcome.is_ok())
        .filter_map(|o| Some(o.attempts.last()?.answered - o.attempts.first()?.sent))
        .collect();
    accepted.sort();
    // Nearest rank.
    let rank = (accepted.len() * 99).div_ceil(100);
    Seen {
        p99: accepted
            .get(rank.saturating_sub(1))
            .copied()
            .unwrap_or_default(),
        tries: attempts.len(),
        failed: attempts.iter().filter(|a| !a.ok).count(),
        unexpected: attempts
            .iter()
            .filter(|a| !(a.ok || a.status == Some(503) && a.retry_after))
            .filter_map(|a| a.status)
            .fold(Default::default(), |mut by_status, status| {
                *by_status.entry(status).or_default() += 1;
                by_status
            }),
        outage: answered
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default(),
        slowest_ok: attempts
            .iter()
            .filter(|a| a.ok)
            .map(|a| a.answered - a.sent)
            .max()
            .unwrap_or_default(),
    }
}

/// The orders accepted (answered 2xx) and those among them that must end Rejected.
pub struct Accepted {
    pub ids: Vec<String>,
    pub big: HashSet<String>,
}

/// Every offered order was accepted (none refused for good); their ids.
pub fn all_accepted(offered: &[Offered]) -> Accepted {
    let refused: Vec<String> = offered
        .iter()
        .filter_map(|o| o.outcome.as_ref().err().map(|e| format!("{}: {e}", o.key)))
        .collect();
    assert!(refused.is_empty(), "refused orders: {refused:#?}");
    Accepted {
        ids: offered
            .iter()
            .filter_map(|o| o.outcome.as_ref().ok().cloned())
            .collect(),
        big: offered
            .iter()
            .filter(|o| o.big)
            .filter_map(|o| o.outcome.as_ref().ok().cloned())
            .collect(),
    }
}

/// Waits (at most `timeout`) until every accepted order is final in the read model: Approved, or
/// Rejected and refunded when big. Returns each order's POST→final time in ms.
pub async fn expect_all_final(
    pipeline: &Pipeline,
    accepted: &Accepted,
    timeout: Duration,
) -> Vec<i64> {
    let orders_db = sqlx::PgPool::connect(&pipeline.database_url("ordersdb"))
        .await
        .expect("ordersdb");
    let deadline = Instant::now() + timeout;
    loop {
        let rows: Vec<(String, String, bool, i64)> = sqlx::query_as(
            "SELECT order_id::text, status, refunded, \
             (EXTRACT(EPOCH FROM (updated_at - created_on)) * 1000)::INT8 \
             FROM orders WHERE order_id = ANY($1::uuid[])",
        )
        .bind(&accepted.ids)
        .fetch_all(&orders_db)
        .await
        .unwrap_or_default();
        let is_done = |id: &str, status: &str, refunded: bool| {
            if accepted.big.contains(id) {
                status == "Rejected" && refunded
            } else {
                status == "Approved"
            }
        };
        if rows.len() == accepted.ids.len() && rows.iter().all(|(id, s, r, _)| is_done(id, s, *r)) {
            orders_db.close().await;
            return rows.into_iter().map(|row| row.3).collect();
        }
        if Instant::now() >= deadline {
            let known: HashMap<&str, (&str, bool)> = rows
                .iter()
                .map(|(id, s, r, _)| (id.as_str(), (s.as_str(), *r)))
                .collect();
            let stuck: Vec<String> = accepted
                .ids
                .iter()
                .filter(|id| {
                    !known
                        .get(id.as_str())
                        .is_some_and(|(s, r)| is_done(id, s, *r))
                })
                .map(|id| format!("{id}: {:?}", known.get(id.as_str())))
                .collect();
            panic!(
                "{} of {} accepted orders are not final {timeout:?} after the load: {:#?}",
                stuck.len(),
                accepted.ids.len(),
                &stuck[..stuck.len().min(20)]
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn stream_info(js: &jetstream::Context, name: &str) -> Option<stream::Info> {
    let mut stream = js.get_stream(name).await.ok()?;
    stream.info().await.ok().cloned()
}

/// What the store and the stream hold once they agree.
pub struct Agreed {
    pub event_ids: HashSet<String>,
    /// When each event reached the stream (ms since the epoch), by event id.
    pub published: HashMap<String, i64>,
}

/// The event store and the stream agree: the outbox drains, the store holds exactly 3 events per
/// approved order and 4 per rejected and refunded one, the stream holds each of them once, and
/// nothing was dead-lettered.
pub async fn expect_store_and_stream_agree(
    pipeline: &Pipeline,
    js: &jetstream::Context,
    accepted: &Accepted,
) -> Agreed {
    let events_db = sqlx::PgPool::connect(&pipeline.database_url("eventstoredb"))
        .await
        .expect("eventstoredb");
    let drained = testkit::drain::until_drained(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || testkit::drain::outbox(&events_db).await,
    )
    .await;
    assert!(drained.is_drained(), "the outbox empties: {drained}");
    let event_ids: HashSet<String> = sqlx::query_scalar("SELECT event_id::text FROM events")
        .fetch_all(&events_db)
        .await
        .expect("reading event ids")
        .into_iter()
        .collect();
    events_db.close().await;
    let big = accepted.big.len();
    assert_eq!(
        event_ids.len(),
        3 * (accepted.ids.len() - big) + 4 * big,
        "3 events per approved order, 4 per rejected and refunded one"
    );

    let orders = stream_info(js, "ORDERS").await.expect("ORDERS answers");
    let on_stream = usize::try_from(orders.state.messages).expect("a message count");
    let ordered = js
        .get_stream("ORDERS")
        .await
        .expect("ORDERS")
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = ordered.messages().await.expect("reading ORDERS");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut published: HashMap<String, i64> = HashMap::new();
    let read_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for _ in 0..on_stream {
        let message = tokio::time::timeout_at(read_deadline, messages.next())
            .await
            .expect("ORDERS read within 60 s")
            .expect("the ordered consumer goes on")
            .expect("a message");
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|id| id.as_str().to_owned())
            .expect("every message has a Nats-Msg-Id");
        if let Ok(info) = message.info() {
            let millis = info.published.unix_timestamp_nanos() / 1_000_000;
            published.insert(id.clone(), i64::try_from(millis).unwrap_or(i64::MAX));
        }
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "events on the stream more than once: {twice:?}"
    );
    let seen_ids: HashSet<String> = seen.keys().cloned().collect();
    let missing: Vec<&String> = event_ids.difference(&seen_ids).collect();
    assert!(missing.is_empty(), "events never published: {missing:?}");
    assert_eq!(
        on_stream,
        event_ids.len(),
        "the stream holds exactly the events"
    );
    let dead = stream_info(js, "DEADLETTERS")
        .await
        .expect("DEADLETTERS answers");
    assert_eq!(dead.state.messages, 0, "nothing was dead-lettered");
    Agreed {
        event_ids,
        published,
    }
}

/// No payment effect was doubled: one payment row per accepted order, and each wallet holds the
/// initial credit less one debit per approved order (a rejected order's debit was refunded).
pub async fn expect_payments_once(pipeline: &Pipeline, offered: &[Offered], credit: Decimal) {
    let payments_db = sqlx::PgPool::connect(&pipeline.database_url("paymentsdb"))
        .await
        .expect("paymentsdb");
    let ids: Vec<String> = offered
        .iter()
        .filter_map(|o| o.outcome.as_ref().ok().cloned())
        .collect();
    let payments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE order_id = ANY($1::uuid[])")
            .bind(&ids)
            .fetch_one(&payments_db)
            .await
            .expect("counting payments");
    assert_eq!(
        usize::try_from(payments).unwrap_or_default(),
        ids.len(),
        "one payment per order"
    );
    let mut debits: HashMap<&str, Decimal> = HashMap::new();
    for order in offered.iter().filter(|o| o.outcome.is_ok()) {
        let spent = debits.entry(order.customer.as_str()).or_default();
        if !order.big {
            *spent += Decimal::new(1000, 2);
        }
    }
    let customers: Vec<&str> = debits.keys().copied().collect();
    let balances: Vec<(String, Decimal)> =
        sqlx::query_as("SELECT customer_id, balance FROM wallets WHERE customer_id = ANY($1)")
            .bind(&customers)
            .fetch_all(&payments_db)
            .await
            .expect("reading wallets");
    payments_db.close().await;
    assert_eq!(balances.len(), customers.len(), "a wallet per customer");
    for (customer, balance) in balances {
        let expected = credit - debits[customer.as_str()];
        assert_eq!(
            balance, expected,
            "{customer}'s wallet: the credit less one debit per approved order"
        );
    }
}
