//! `orderctl load`: places orders at a steady rate and follows each to its final status.

pub mod report;

use std::io::{IsTerminal as _, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline_runtime::backoff::{Backoff, Jitter};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::report::{Report, Samples};
use crate::Endpoints;
use order_domain::parse_duration;
use orders_load::api::ApiClient;
use orders_load::{orders, pace};

// The rate and stop of a load are the shared pace's.
pub use orders_load::{Rate, Stop, parse_rate};

/// Place orders for a while (or a number of them) and report throughput and latencies.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("until").required(true).args(["duration", "count"])))]
pub struct Load {
    /// Orders started per second, or `max` to keep `--concurrency` requests always in flight.
    #[arg(long, default_value = "10", value_parser = parse_rate)]
    pub rate: Rate,
    /// POST requests in flight at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Send for this long (`30s`, `2m`).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Send this many orders.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Customers the orders are spread over (fresh ones each run: `load-<run>-<n>`).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub customers: u32,
    /// Orders followed to their final status at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub trackers: u32,
    /// After the last POST, how long to wait for orders to become final; the rest are "not final".
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Attempts after a network error or timeout, with the same `Idempotency-Key`.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What [`run`] does.
#[derive(Debug, Clone)]
pub struct Options {
    pub rate: Rate,
    pub concurrency: usize,
    pub stop: Stop,
    pub customers: u32,
    pub trackers: usize,
    pub settle: Duration,
    pub retries: u32,
    /// A NATS client to learn final statuses from querymodelworker's notices
    /// ([`pipeline_runtime::stream::READ_MODEL_SUBJECT`]) instead of re-reading the API.
    pub notices: Option<async_nats::Client>,
}

impl Load {
    pub fn options(&self) -> Options {
        Options {
            rate: self.rate,
            concurrency: self.concurrency as usize,
            stop: match (self.count, self.duration) {
                (Some(count), _) => Stop::Count(count),
                (None, Some(duration)) => Stop::After(duration),
                // clap's group requires one of them.
                (None, None) => Stop::Count(0),
            },
            customers: self.customers,
            trackers: self.trackers as usize,
            settle: self.settle,
            retries: self.retries,
            notices: None,
        }
    }

    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let api = endpoints.api()?;
        let mut options = self.options();
        // The final status comes from querymodelworker's notices when NATS answers: following an
        // order then costs the pipeline nothing. Without NATS, from re-reading the API.
        options.notices = match pipeline_runtime::nats::connect(
            &endpoints.nats,
            "orderctl",
            Duration::from_secs(2),
        )
        .await
        {
            Ok(client) => Some(client),
            Err(err) => {
                eprintln!("no read-model notices ({err:#}): following orders through the API");
                None
            }
        };
        let progress = progress_bar(&options);
        // The first Ctrl-C stops sending (orders placed are still followed, for at most `settle`),
        // the second stops waiting; the report comes either way.
        let stop = Interrupt::default();
        let on_signal = stop.clone();
        let signal = tokio::spawn(async move {
            pipeline_runtime::shutdown::signal().await;
            on_signal.sending.cancel();
            pipeline_runtime::shutdown::signal().await;
            on_signal.waiting.cancel();
        });
        let report = run(api, options, progress.clone(), stop).await;
        signal.abort();
        progress.finish_and_clear();
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            write!(out, "{}", report.render())?;
        }
        // A run where nothing got through is a failure for a script, whatever the report says.
        anyhow::ensure!(
            report.sent == 0 || report.accepted > 0,
            "no order was accepted by {}",
            endpoints.api_url
        );
        Ok(())
    }
}

/// Drawn on stderr when it is a terminal; hidden otherwise (scripts and logs get the report only).
fn progress_bar(options: &Options) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    match options.stop {
        Stop::Count(count) => ProgressBar::with_draw_target(Some(count), target).with_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        Stop::After(_) => ProgressBar::with_draw_target(None, target).with_style(
            ProgressStyle::with_template("{elapsed_precise} {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    }
}

/// Live counts, read by the progress bar.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    finals: AtomicU64,
}

type Shared = Arc<Mutex<Samples>>;

fn record(samples: &Shared, update: impl FnOnce(&mut Samples)) {
    // A panicking task cannot leave the samples half-written: every update is one statement.
    update(&mut samples.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Ends a run early.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    /// Stop sending orders.
    pub sending: CancellationToken,
    /// Stop waiting for orders to become final.
    pub waiting: CancellationToken,
}

/// Sends orders as `options` says, follows the accepted ones until final (or `settle` after the
/// last POST), and reports.
pub async fn run(
    api: ApiClient,
    options: Options,
    progress: ProgressBar,
    stop: Interrupt,
) -> Report {
    let start = Instant::now();
    let samples: Shared = Arc::default();
    let counters = Arc::new(Counters::default());
    let trackers_allowed = Arc::new(Semaphore::new(options.trackers.max(1)));
    let give_up = CancellationToken::new();
    let run_id = Uuid::new_v4().simple().to_string();
    let prefix = format!("load-{}", &run_id[..8]);

    let watcher = match &options.notices {
        Some(client) => match Finals::watch(client).await {
            Ok(finals) => Some(finals),
            Err(err) => {
                eprintln!(
                    "cannot subscribe to read-model notices ({err:#}): following orders through the API"
                );
                None
            }
        },
        None => None,
    };
    record(&samples, |s| s.followed_by_notices = watcher.is_some());
    let ticker = tokio::spawn(show_progress(progress.clone(), Arc::clone(&counters)));
    let pace = pace::Pace {
        rate: options.rate,
        concurrency: options.concurrency,
        stop: Some(options.stop),
    };
    let trackers: Arc<Mutex<JoinSet<()>>> = Arc::default();
    let offered = pace::offer(pace, &stop.sending, |_| {
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let body = orders::random_order(&mut rand::rng(), &prefix, options.customers);
        let order = Order {
            api: api.clone(),
            samples: Arc::clone(&samples),
            counters: Arc::clone(&counters),
            start,
            finals: watcher.clone(),
        };
        let trackers_allowed = Arc::clone(&trackers_allowed);
        let trackers = Arc::clone(&trackers);
        let give_up = give_up.clone();
        let retries = options.retries;
        // The POST holds one of the `concurrency` permits; following the order holds none.
        async move {
            if let Some((order_id, sent_at)) = order.place(&body, retries).await {
                let follow = order.follow(order_id, sent_at, trackers_allowed, give_up);
                trackers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .spawn(follow);
            }
        }
    })
    .await;
    record(&samples, |s| s.sent = offered.sent);

    // Every POST has its answer: wait (bounded) for the accepted orders to become final.
    let settle_until = Instant::now() + options.settle;
    let mut trackers =
        std::mem::take(&mut *trackers.lock().unwrap_or_else(PoisonError::into_inner));
    loop {
        tokio::select! {
            joined = trackers.join_next() => if joined.is_none() { break },
            () = tokio::time::sleep_until(settle_until), if !give_up.is_cancelled() => give_up.cancel(),
            () = stop.waiting.cancelled(), if !give_up.is_cancelled() => give_up.cancel(),
        }
    }
    ticker.abort();
    let samples = samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Report::new(&samples)
}

async fn show_progress(progress: ProgressBar, counters: Arc<Counters>) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    // Rate over the last second: the sent count one second (five ticks) ago.
    let mut history: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    loop {
        every.tick().await;
        let sent = counters.sent.load(Ordering::Relaxed);
        let accepted = counters.accepted.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        let finals = counters.finals.load(Ordering::Relaxed);
        history.push_back(sent);
        if history.len() > 6 {
            history.pop_front();
        }
        let rate = sent - history.front().copied().unwrap_or(sent);
        let seconds = (history.len().max(2) - 1) as f64 * 0.2;
        progress.set_message(format!(
            "sent {sent}  accepted {accepted}  final {finals}  in flight {}  errors {failed}  {:.0}/s",
            sent.saturating_sub(finals + failed),
            rate as f64 / seconds,
        ));
        progress.set_position(sent);
    }
}

/// What one order's tasks share.
struct Order {
    api: ApiClient,
    samples: Shared,
    counters: Arc<Counters>,
    start: Instant,
    finals: Option<Finals>,
}

/// Event types after which an order is final in the read model.
const FINAL_EVENTS: &[&str] = &[
    "approved",
    "paymentfailed",
    "rejected",
    "cancelled",
    "paymentrefunded",
];

/// When each order became final in the read model, from querymodelworker's notices: one
/// subscription for the whole run, so following an order costs the pipeline nothing. Each waiting
/// order has its own channel, so a notice wakes only the orders it names.
#[derive(Clone, Default)]
struct Finals {
    state: Arc<Mutex<FinalsState>>,
}

#[derive(Default)]
struct FinalsState {
    /// Final notices of orders nobody waits for yet (the notice beat the POST's answer).
    seen: std::collections::HashMap<Uuid, (String, Instant)>,
    waiting: std::collections::HashMap<Uuid, tokio::sync::oneshot::Sender<(String, Instant)>>,
}

impl Finals {
    async fn watch(client: &async_nats::Client) -> anyhow::Result<Finals> {
        use futures::StreamExt as _;
        let mut subscription = client
            .subscribe(pipeline_runtime::stream::READ_MODEL_SUBJECT)
            .await?;
        // The subscription is live once the server has it.
        client.flush().await?;
        let finals = Finals::default();
        let writer = finals.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let now = Instant::now();
                let Ok(changes) = serde_json::from_slice::<
                    Vec<pipeline_runtime::stream::ReadModelChange>,
                >(&message.payload) else {
                    continue;
                };
                let mut state = writer.state.lock().unwrap_or_else(PoisonError::into_inner);
                for change in changes {
                    if !FINAL_EVENTS.contains(&change.event_type.as_str()) {
                        continue;
                    }
                    let found = (status_after(&change.event_type), now);
                    match state.waiting.remove(&change.order_id) {
                        Some(waiter) => {
                            let _ = waiter.send(found);
                        }
                        None => {
                            state.seen.entry(change.order_id).or_insert(found);
                        }
                    }
                }
            }
        });
        Ok(finals)
    }

    /// Waits for the order's final notice; after `patience` without it, asks the API once (a lost
    /// notice), then waits again.
    async fn wait(&self, api: &ApiClient, order_id: Uuid, patience: Duration) -> (String, Instant) {
        loop {
            let receiver = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(found) = state.seen.remove(&order_id) {
                    return found;
                }
                let (sender, receiver) = tokio::sync::oneshot::channel();
                state.waiting.insert(order_id, sender);
                receiver
            };
            if let Ok(Ok(found)) = tokio::time::timeout(patience, receiver).await {
                return found;
            }
            if let Ok(order) = api.order(order_id, None).await
                && order.status.is_final()
            {
                return (order.status.to_string(), Instant::now());
            }
        }
    }
}

/// The status an order has after its final event.
fn status_after(event_type: &str) -> String {
    match event_type {
        "approved" => "Approved",
        "paymentfailed" => "PaymentFailed",
        "rejected" => "Rejected",
        "cancelled" => "Cancelled",
        // A refund follows a rejection or a cancellation; the status stays what it was.
        _ => "Refunded",
    }
    .to_owned()
}

impl Order {
    /// POSTs the order (again with the same key after a network error or timeout); the order id and
    /// when the first attempt went out, if accepted.
    async fn place(&self, body: &Value, retries: u32) -> Option<(Uuid, Instant)> {
        let key = Uuid::new_v4().to_string();
        let sent_at = Instant::now();
        let mut attempt = 0;
        let answer = loop {
            match self.api.place(body, Some(&key)).await {
                Err(err) if err.is_transport() && attempt < retries => {
                    attempt += 1;
                    record(&self.samples, |s| s.retries += 1);
                    tokio::time::sleep(BACKOFF.delay(attempt)).await;
                }
                other => break other,
            }
        };
        let answered = Instant::now();
        let order_id = answer.map(|order| order.order_id);
        record(&self.samples, |s| {
            s.post_window = s.post_window.max(answered - self.start)
        });
        match order_id {
            Ok(order_id) => {
                record(&self.samples, |s| s.post_latencies.push(answered - sent_at));
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                Some((order_id, sent_at))
            }
            Err(err) => {
                record(&self.samples, |s| s.record_error(err.kind()));
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Reads the order until its status is final, holding one of the trackers' permits; counted
    /// "not final" when `give_up` fires first.
    async fn follow(
        self,
        order_id: Uuid,
        sent_at: Instant,
        allowed: Arc<Semaphore>,
        give_up: CancellationToken,
    ) {
        let followed = async {
            if let Some(finals) = &self.finals {
                // A notice that was lost is made up for by one read after this long.
                return Some(
                    finals
                        .wait(&self.api, order_id, Duration::from_secs(10))
                        .await,
                );
            }
            let _permit = allowed.acquire_owned().await.ok()?;
            // Version 1 is the created order (Pending); any final status comes later.
            let mut next = 2;
            loop {
                match self.api.order(order_id, Some(next)).await {
                    Ok(order) => {
                        if order.status.is_final() {
                            return Some((order.status.to_string(), Instant::now()));
                        }
                        next = next.max(order.version + 1);
                    }
                    // ordersvc waits for `next` before answering, so a hot loop is not possible on
                    // success; errors (not projected yet, a restart) get a short pause.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        };
        let outcome = tokio::select! {
            outcome = followed => outcome,
            () = give_up.cancelled() => None,
        };
        match outcome {
            Some((status, seen)) => {
                record(&self.samples, |s| {
                    s.record_final(&status, seen - sent_at);
                    s.final_window = s.final_window.max(seen - self.start);
                });
                self.counters.finals.fetch_add(1, Ordering::Relaxed);
            }
            None => record(&self.samples, |s| s.not_final += 1),
        }
    }
}

/// 200 ms, 400 ms, 800 ms ... up to 3 s, each with up to half of it added at random so that
/// clients cut off together do not come back together.
const BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(200),
    Duration::from_secs(3),
    Jitter::Half,
);
