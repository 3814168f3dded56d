//! After the load: waiting for the pipeline to drain, then checking what must hold whatever was
//! killed, against the event store, the read model, the payments database and the stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use order_domain::{
    Deadlines, Order, OrderEvent, OrderStatus, Step, deadline_event_id, deadline_step,
};
use order_readmodel::{OrderRow, order_columns};
use pipeline_runtime::deadletter::dl_headers;
use pipeline_runtime::stream::{CONSUMERS, DEAD_LETTER_STREAM, STREAM, headers};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::types::time::OffsetDateTime;
use tokio::time::Instant;
use uuid::Uuid;

use super::faults::Outcome;
use super::load::LoadStats;
use super::{INITIAL_CREDIT, REVIEW_MAX_AMOUNT};
use e2e_tests::{FINAL, Pipeline};

/// How many violations an invariant quotes.
const EXAMPLES: usize = 5;

/// One property of the run, with how many things were checked and what broke it.
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    /// A short name: `recovery`, `clients`, `drain`, `final`, `history`, `read-model`,
    /// `payments`, `rules`, `deadlines`, `stream`, `dead-letters`.
    pub key: &'static str,
    pub name: &'static str,
    /// How many things were checked, in `unit`s.
    pub checked: u64,
    pub unit: &'static str,
    pub violations: u64,
    /// The first few violations.
    pub examples: Vec<String>,
}

impl Invariant {
    fn new(key: &'static str, name: &'static str, unit: &'static str) -> Invariant {
        Invariant {
            key,
            name,
            checked: 0,
            unit,
            violations: 0,
            examples: Vec::new(),
        }
    }

    pub fn holds(&self) -> bool {
        self.violations == 0
    }

    fn violation(&mut self, what: impl Into<String>) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(what.into());
        }
    }

    /// Records a violation when `ok` is false.
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.violation(what());
        }
    }
}

/// Connections to everything the checks read.
struct Stores {
    events: PgPool,
    orders: PgPool,
    payments: PgPool,
    js: jetstream::Context,
}

impl Stores {
    async fn connect(pipeline: &Pipeline) -> anyhow::Result<Stores> {
        let pool = |database: &str| {
            let url = pipeline.database_url(database);
            let database = database.to_owned();
            async move {
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url)
                    .await
                    .with_context(|| format!("connecting to {database}"))
            }
        };
        let servers = pipeline
            .nats_url()
            .split(',')
            .map(|url| url.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .context("NATS_URL")?;
        let client = async_nats::connect(servers.as_slice())
            .await
            .context("connecting to nats-server")?;
        Ok(Stores {
            events: pool("eventstoredb").await?,
            orders: pool("ordersdb").await?,
            payments: pool("paymentsdb").await?,
            js: jetstream::new(client),
        })
    }

    async fn close(self) {
        self.events.close().await;
        self.orders.close().await;
        self.payments.close().await;
    }
}

/// Final, and refunded when it has to be: a Rejected order always was debited; a Cancelled one
/// was when it holds a payment id.
fn settled(status: &str, refunded: bool, payment_id: Option<Uuid>) -> bool {
    FINAL.contains(&status)
        && (status != "Rejected" || refunded)
        && (status != "Cancelled" || payment_id.is_none() || refunded)
}

/// How the wait for the pipeline to drain ended.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    pub seconds: f64,
    pub complete: bool,
    /// What was still not done when the wait ended early.
    pub left: Option<String>,
}

/// Waits (at most `timeout`) until every order is final in the read model (refunded when it must
/// be), the outbox is empty and no worker has a message pending or unacknowledged.
pub(crate) async fn drain(pipeline: &Pipeline, load: &LoadStats, timeout: Duration) -> Drain {
    let began = Instant::now();
    let deadline = began + timeout;
    let mut stores = None;
    loop {
        let left = match &stores {
            None => match Stores::connect(pipeline).await {
                Ok(connected) => {
                    stores = Some(connected);
                    continue;
                }
                Err(error) => format!("could not connect: {error:#}"),
            },
            Some(stores) => match still_busy(stores, load).await {
                Ok(None) => {
                    return Drain {
                        seconds: began.elapsed().as_secs_f64(),
                        complete: true,
                        left: None,
                    };
                }
                Ok(Some(left)) => left,
                Err(error) => format!("could not look: {error:#}"),
            },
        };
        if Instant::now() >= deadline {
            if let Some(stores) = stores {
                stores.close().await;
            }
            return Drain {
                seconds: began.elapsed().as_secs_f64(),
                complete: false,
                left: Some(left),
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What is not done yet, or `None` when the pipeline is idle with every order settled.
async fn still_busy(stores: &Stores, load: &LoadStats) -> anyhow::Result<Option<String>> {
    let mut orders: HashSet<Uuid> = load.placed.iter().map(|p| p.order_id).collect();
    let stored: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT aggregate_id FROM events")
        .fetch_all(&stores.events)
        .await?;
    orders.extend(stored.iter().filter_map(|(id,)| id.parse::<Uuid>().ok()));
    let rows: Vec<(Uuid, String, bool, Option<Uuid>)> =
        sqlx::query_as("SELECT order_id, status, refunded, payment_id FROM orders")
            .fetch_all(&stores.orders)
            .await?;
    let rows: HashMap<Uuid, (String, bool, Option<Uuid>)> = rows
        .into_iter()
        .map(|(id, status, refunded, payment)| (id, (status, refunded, payment)))
        .collect();
    let mut waiting: Vec<String> = Vec::new();
    for id in &orders {
        match rows.get(id) {
            Some((status, refunded, payment)) if settled(status, *refunded, *payment) => {}
            Some((status, refunded, _)) => {
                waiting.push(format!("{id} is {status} (refunded: {refunded})"));
            }
            None => waiting.push(format!("{id} is not in the read model")),
        }
    }
    let mut left: Vec<String> = Vec::new();
    if !waiting.is_empty() {
        waiting.sort();
        left.push(format!(
            "{} of {} orders not settled (e.g. {})",
            waiting.len(),
            orders.len(),
            waiting[..waiting.len().min(3)].join("; ")
        ));
    }
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&stores.events)
        .await?;
    if outbox > 0 {
        left.push(format!("the outbox holds {outbox} events"));
    }
    let stream = stores.js.get_stream(STREAM).await?;
    for spec in CONSUMERS {
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(spec.durable)
            .await
            .map_err(|error| anyhow::anyhow!("consumer {}: {error}", spec.durable))?;
        let info = consumer.info().await?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            left.push(format!(
                "{} has {} messages pending and {} unacknowledged",
                spec.durable, info.num_pending, info.num_ack_pending
            ));
        }
    }
    Ok((!left.is_empty()).then(|| left.join("; ")))
}

/// An event as the event store keeps it.
struct Stored {
    event_id: Uuid,
    event_type: String,
    aggregate_id: String,
    aggregate_type: String,
    version: i64,
    data: Value,
    stream: String,
    created_at: OffsetDateTime,
}

struct ItemRow {
    code: String,
    name: String,
    unit_price: Decimal,
    quantity: i64,
}

struct PaymentRow {
    payment_id: Uuid,
    customer_id: String,
    amount: Decimal,
    status: String,
    debit_event_id: Option<Uuid>,
    refund_event_id: Option<Uuid>,
}

/// A message on a stream: its sequence and the headers the checks read.
struct Message {
    sequence: u64,
    subject: String,
    header: HashMap<&'static str, String>,
}

/// Everything the checks read, taken once the pipeline is idle.
struct Snapshot {
    events: Vec<Stored>,
    outbox: Vec<Uuid>,
    orders: HashMap<Uuid, OrderRow>,
    items: HashMap<Uuid, Vec<ItemRow>>,
    payments: HashMap<Uuid, PaymentRow>,
    wallets: BTreeMap<String, Decimal>,
    stream: Vec<Message>,
    dead_letters: Vec<Message>,
}

type EventRow = (
    Uuid,
    String,
    String,
    String,
    i64,
    Value,
    String,
    OffsetDateTime,
);
type PaymentRowTuple = (
    Uuid,
    Uuid,
    String,
    Decimal,
    String,
    Option<Uuid>,
    Option<Uuid>,
);

impl Snapshot {
    async fn take(stores: &Stores) -> anyhow::Result<Snapshot> {
        let events: Vec<EventRow> = sqlx::query_as(
            "SELECT event_id, event_type, aggregate_id, aggregate_type, aggregate_version, \
             event_data, stream, created_at FROM events ORDER BY aggregate_id, aggregate_version",
        )
        .fetch_all(&stores.events)
        .await
        .context("reading eventstoredb.events")?;
        let outbox: Vec<(Uuid,)> = sqlx::query_as("SELECT event_id FROM outbox")
            .fetch_all(&stores.events)
            .await
            .context("reading eventstoredb.outbox")?;
        let orders: Vec<OrderRow> =
            sqlx::query_as(concat!("SELECT ", order_columns!(), " FROM orders"))
                .fetch_all(&stores.orders)
                .await
                .context("reading ordersdb.orders")?;
        let items: Vec<(Uuid, String, String, Decimal, i64)> = sqlx::query_as(
            "SELECT order_id, code, name, unit_price, quantity FROM order_items \
             ORDER BY order_id, line_no",
        )
        .fetch_all(&stores.orders)
        .await
        .context("reading ordersdb.order_items")?;
        let payments: Vec<PaymentRowTuple> = sqlx::query_as(
            "SELECT order_id, payment_id, customer_id, amount, status, debit_event_id, \
             refund_event_id FROM payments",
        )
        .fetch_all(&stores.payments)
        .await
        .context("reading paymentsdb.payments")?;
        let wallets: Vec<(String, Decimal)> =
            sqlx::query_as("SELECT customer_id, balance FROM wallets")
                .fetch_all(&stores.payments)
                .await
                .context("reading paymentsdb.wallets")?;
        let stream = read_stream(&stores.js, STREAM)
            .await
            .with_context(|| format!("reading the {STREAM} stream"))?;
        let dead_letters = read_stream(&stores.js, DEAD_LETTER_STREAM)
            .await
            .with_context(|| format!("reading the {DEAD_LETTER_STREAM} stream"))?;

        let mut item_rows: HashMap<Uuid, Vec<ItemRow>> = HashMap::new();
        for (order_id, code, name, unit_price, quantity) in items {
            item_rows.entry(order_id).or_default().push(ItemRow {
                code,
                name,
                unit_price,
                quantity,
            });
        }
        Ok(Snapshot {
            events: events
                .into_iter()
                .map(
                    |(
                        event_id,
                        event_type,
                        aggregate_id,
                        aggregate_type,
                        version,
                        data,
                        stream,
                        created_at,
                    )| {
                        Stored {
                            event_id,
                            event_type,
                            aggregate_id,
                            aggregate_type,
                            version,
                            data,
                            stream,
                            created_at,
                        }
                    },
                )
                .collect(),
            outbox: outbox.into_iter().map(|(id,)| id).collect(),
            orders: orders.into_iter().map(|row| (row.order_id, row)).collect(),
            items: item_rows,
            payments: payments
                .into_iter()
                .map(|row| {
                    (
                        row.0,
                        PaymentRow {
                            payment_id: row.1,
                            customer_id: row.2,
                            amount: row.3,
                            status: row.4,
                            debit_event_id: row.5,
                            refund_event_id: row.6,
                        },
                    )
                })
                .collect(),
            wallets: wallets.into_iter().collect(),
            stream,
            dead_letters,
        })
    }
}

/// Headers the checks read from stream messages.
const READ_HEADERS: [&str; 5] = [
    headers::MSG_ID,
    headers::AGGREGATE_ID,
    headers::AGGREGATE_VERSION,
    dl_headers::REASON,
    dl_headers::WORKER,
];

/// Every message of a stream, read with an ordered consumer up to the last sequence it had when
/// the read began.
async fn read_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<Vec<Message>> {
    let mut stream = js.get_stream(name).await?;
    let state = stream.info().await?.state.clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut read = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), messages.next())
            .await
            .with_context(|| {
                format!(
                    "no message for 15 s after {} of {} (sequence {})",
                    read.len(),
                    state.messages,
                    state.last_sequence
                )
            })?;
        let Some(message) = next else { break };
        let message = message?;
        let sequence = message
            .info()
            .map(|info| info.stream_sequence)
            .map_err(|error| anyhow::anyhow!("a message without stream info: {error}"))?;
        let mut header = HashMap::new();
        if let Some(map) = &message.headers {
            for key in READ_HEADERS {
                if let Some(value) = map.get(key) {
                    header.insert(key, value.as_str().to_owned());
                }
            }
        }
        read.push(Message {
            sequence,
            subject: message.subject.to_string(),
            header,
        });
        if sequence >= state.last_sequence {
            break;
        }
    }
    Ok(read)
}

/// The figures and invariants of the checks.
pub(crate) struct Checked {
    /// Payment rows by status (debited, refunded, failed, voided).
    pub payments: BTreeMap<String, u64>,
    pub orders: u64,
    pub events: u64,
    pub finals: BTreeMap<String, u64>,
    pub refunded: u64,
    /// deadlinewatcher's cancels by the step they ended (`payment`, `review`).
    pub deadline_cancels: BTreeMap<String, u64>,
    pub invariants: Vec<Invariant>,
}

/// An order's history, decoded and folded.
struct History<'a> {
    events: Vec<(&'a Stored, OrderEvent)>,
    order: Order,
}

pub(crate) async fn check(
    pipeline: &Pipeline,
    load: &LoadStats,
    faults: &Outcome,
    drain: &Drain,
    deadlines: &Deadlines,
) -> anyhow::Result<Checked> {
    let stores = Stores::connect(pipeline)
        .await
        .context("connecting to check the invariants")?;
    let snapshot = Snapshot::take(&stores).await;
    stores.close().await;
    let snapshot = snapshot?;
    let initial = Decimal::from_str(INITIAL_CREDIT).context("INITIAL_CREDIT")?;
    let review_max = Decimal::from_str(REVIEW_MAX_AMOUNT).context("REVIEW_MAX_AMOUNT")?;

    let mut recovery = Invariant::new(
        "recovery",
        "every process came back after each fault and none exited by itself",
        "processes",
    );
    recovery.checked = faults
        .records
        .iter()
        .map(|r| r.outages.len() as u64)
        .sum::<u64>()
        + faults.checks;
    for problem in &faults.problems {
        recovery.violation(problem.clone());
    }

    let clients = clients(load);

    let mut drained = Invariant::new(
        "drain",
        "the pipeline drained (orders settled, outbox empty, nothing pending)",
        "runs",
    );
    drained.checked = 1;
    if !drain.complete {
        drained.violation(format!(
            "after {:.0} s: {}",
            drain.seconds,
            drain.left.as_deref().unwrap_or("(unknown)")
        ));
    }

    let (histories, history) = histories(&snapshot);
    let settled = settled_orders(&snapshot, load, &histories);
    let read_model = read_model(&snapshot, &histories);
    let payments = payments(&snapshot, &histories, initial);
    let rules = rules(&histories, initial, review_max);
    let deadlines = deadline_cancels(&histories, deadlines);
    let stream = stream(&snapshot);
    let mut dead = Invariant::new(
        "dead-letters",
        "no message was dead-lettered",
        "dead letters",
    );
    dead.checked = snapshot.dead_letters.len() as u64;
    for letter in &snapshot.dead_letters {
        dead.violation(format!(
            "{} (from {}): {}",
            letter.subject,
            letter
                .header
                .get(dl_headers::WORKER)
                .map_or("?", String::as_str),
            letter
                .header
                .get(dl_headers::REASON)
                .map_or("no reason", String::as_str)
        ));
    }

    let mut finals: BTreeMap<String, u64> = BTreeMap::new();
    let mut refunded = 0;
    let mut deadline_cancels: BTreeMap<String, u64> = BTreeMap::new();
    for history in histories.values() {
        *finals
            .entry(history.order.status.as_str().to_owned())
            .or_default() += 1;
        if history.order.refunded {
            refunded += 1;
        }
        for (stored, event) in &history.events {
            if let OrderEvent::Cancelled(_) = event
                && let Some(step) = Step::ALL.into_iter().find(|step| {
                    stored.event_id == deadline_event_id(history.order.order_id, *step)
                })
            {
                *deadline_cancels
                    .entry(step.as_str().to_owned())
                    .or_default() += 1;
            }
        }
    }
    let mut payment_rows: BTreeMap<String, u64> = BTreeMap::new();
    for row in snapshot.payments.values() {
        *payment_rows.entry(row.status.clone()).or_default() += 1;
    }
    Ok(Checked {
        payments: payment_rows,
        orders: histories.len() as u64,
        events: snapshot.events.len() as u64,
        finals,
        refunded,
        deadline_cancels,
        invariants: vec![
            recovery, clients, drained, settled, history, read_model, payments, rules, deadlines,
            stream, dead,
        ],
    })
}

fn clients(load: &LoadStats) -> Invariant {
    let mut clients = Invariant::new(
        "clients",
        "clients got only answers a correct pipeline gives, and none gave up",
        "requests",
    );
    clients.checked = load.offered + load.cancels.requested;
    for example in &load.unexpected_examples {
        clients.violation(example.clone());
    }
    // Quoted up to EXAMPLES; the rest are counted.
    clients.violations = load.unexpected;
    for _ in 0..load.gave_up {
        clients.violation("a POST still failed after the retry deadline".to_owned());
    }
    for _ in 0..load.cancels.gave_up {
        clients.violation("a cancel still failed after the retry deadline".to_owned());
    }
    clients
}

/// Every order's history: versions 1..n without a gap, all `order` events of the ORDERS stream,
/// each decodable, and together a legal path of the order's state machine.
fn histories(snapshot: &Snapshot) -> (BTreeMap<Uuid, History<'_>>, Invariant) {
    let mut invariant = Invariant::new(
        "history",
        "every order's history is a legal path with versions 1..n",
        "orders",
    );
    let mut grouped: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
    for event in &snapshot.events {
        grouped.entry(&event.aggregate_id).or_default().push(event);
    }
    let mut histories = BTreeMap::new();
    for (aggregate_id, events) in grouped {
        invariant.checked += 1;
        let types = || {
            events
                .iter()
                .map(|e| format!("v{} {}", e.version, e.event_type))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Ok(order_id) = aggregate_id.parse::<Uuid>() else {
            invariant.violation(format!("aggregate id {aggregate_id:?} is not a UUID"));
            continue;
        };
        let contiguous = events
            .iter()
            .enumerate()
            .all(|(i, e)| e.version == i as i64 + 1);
        invariant.expect(contiguous, || {
            format!("order {order_id}: versions are not 1..n: {}", types())
        });
        invariant.expect(
            events
                .iter()
                .all(|e| e.aggregate_type == order_domain::AGGREGATE_TYPE && e.stream == STREAM),
            || format!("order {order_id}: an event not of type order on {STREAM}"),
        );
        let decoded: Result<Vec<(&Stored, OrderEvent)>, String> = events
            .iter()
            .map(|e| {
                OrderEvent::decode(&e.event_type, &e.data)
                    .map(|decoded| (*e, decoded))
                    .map_err(|error| format!("v{}: {error}", e.version))
            })
            .collect();
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                invariant.violation(format!("order {order_id}: {error}"));
                continue;
            }
        };
        match Order::fold(decoded.iter().map(|(_, e)| e)) {
            Ok(Some(order)) => {
                invariant.expect(order.order_id == order_id, || {
                    format!("order {order_id}: created names order {}", order.order_id)
                });
                invariant.expect(order.version == events.len() as i64, || {
                    format!("order {order_id}: folded to version {}", order.version)
                });
                histories.insert(
                    order_id,
                    History {
                        events: decoded,
                        order,
                    },
                );
            }
            Ok(None) => invariant.violation(format!("order {order_id}: no event")),
            Err(error) => {
                invariant.violation(format!("order {order_id}: {error} ({})", types()));
            }
        }
    }
    (histories, invariant)
}

/// Every accepted order (and every other order in the store) is final in the read model, refunded
/// when it must be, and for the customer and amount the client posted.
fn settled_orders(
    snapshot: &Snapshot,
    load: &LoadStats,
    histories: &BTreeMap<Uuid, History<'_>>,
) -> Invariant {
    let mut invariant = Invariant::new(
        "final",
        "every accepted order is final in the read model (refunded when it must be)",
        "orders",
    );
    let check = |invariant: &mut Invariant, order_id: Uuid, what: &str| match snapshot
        .orders
        .get(&order_id)
    {
        None => invariant.violation(format!("{what} {order_id} is not in the read model")),
        Some(row) => invariant.expect(settled(&row.status, row.refunded, row.payment_id), || {
            format!(
                "{what} {order_id} is {} at version {} (refunded: {})",
                row.status, row.version, row.refunded
            )
        }),
    };
    let mut accepted = HashSet::new();
    for placed in &load.placed {
        invariant.checked += 1;
        accepted.insert(placed.order_id);
        invariant.expect(histories.contains_key(&placed.order_id), || {
            format!(
                "accepted order {} has no history in the event store",
                placed.order_id
            )
        });
        check(&mut invariant, placed.order_id, "accepted order");
        if let Some(row) = snapshot.orders.get(&placed.order_id) {
            invariant.expect(
                row.customer_id == placed.customer_id && row.amount == placed.amount,
                || {
                    format!(
                        "order {} is {} for {}, but {} for {} was posted",
                        placed.order_id,
                        row.amount,
                        row.customer_id,
                        placed.amount,
                        placed.customer_id
                    )
                },
            );
        }
    }
    // Orders whose 2xx the client never saw (the answer was lost, then the client gave up).
    for order_id in histories.keys().filter(|id| !accepted.contains(id)) {
        invariant.checked += 1;
        check(&mut invariant, *order_id, "unacknowledged order");
    }
    invariant
}

/// The read model holds exactly the folded orders, field by field.
fn read_model(snapshot: &Snapshot, histories: &BTreeMap<Uuid, History<'_>>) -> Invariant {
    let mut invariant = Invariant::new(
        "read-model",
        "the read model equals the fold of the event store",
        "orders",
    );
    for (order_id, history) in histories {
        invariant.checked += 1;
        let order = &history.order;
        let Some(row) = snapshot.orders.get(order_id) else {
            invariant.violation(format!("order {order_id} has no read-model row"));
            continue;
        };
        let mut differences = Vec::new();
        let mut differ = |field: &str, read: String, folded: String| {
            if read != folded {
                differences.push(format!("{field} {read} (fold: {folded})"));
            }
        };
        differ(
            "status",
            row.status.clone(),
            order.status.as_str().to_owned(),
        );
        differ(
            "version",
            row.version.to_string(),
            order.version.to_string(),
        );
        differ(
            "amount",
            row.amount.normalize().to_string(),
            order.amount.as_decimal().normalize().to_string(),
        );
        differ(
            "refunded",
            row.refunded.to_string(),
            order.refunded.to_string(),
        );
        differ(
            "payment_id",
            format!("{:?}", row.payment_id),
            format!("{:?}", order.payment_id),
        );
        differ(
            "reason",
            format!("{:?}", row.reason),
            format!("{:?}", order.reason),
        );
        differ(
            "customer_id",
            row.customer_id.clone(),
            order.customer_id.clone(),
        );
        differ(
            "restaurant_id",
            row.restaurant_id.clone(),
            order.restaurant_id.clone(),
        );
        differ(
            "created_on",
            row.created_on.to_string(),
            order.created_on.to_string(),
        );
        let items = snapshot.items.get(order_id).map_or(&[][..], Vec::as_slice);
        let same_items = items.len() == order.items.len()
            && items.iter().zip(&order.items).all(|(row, item)| {
                row.code == item.code
                    && row.name == item.name
                    && row.unit_price == item.unit_price.as_decimal()
                    && row.quantity == i64::from(item.quantity)
            });
        if items.len() != order.items.len() {
            differences.push(format!(
                "{} item lines (fold: {})",
                items.len(),
                order.items.len()
            ));
        } else if !same_items {
            differences.push("item lines differ".to_owned());
        }
        if !differences.is_empty() {
            invariant.violation(format!("order {order_id}: {}", differences.join(", ")));
        }
    }
    let orphans = snapshot
        .orders
        .keys()
        .filter(|id| !histories.contains_key(id));
    for order_id in orphans {
        invariant.checked += 1;
        invariant.violation(format!("read-model row {order_id} has no event"));
    }
    invariant
}

/// paymentsdb agrees with the payment events: one payment per order, a refund only of a debit
/// and for its amount, and every wallet = initial credit − debits + refunds.
fn payments(
    snapshot: &Snapshot,
    histories: &BTreeMap<Uuid, History<'_>>,
    initial: Decimal,
) -> Invariant {
    let mut invariant = Invariant::new(
        "payments",
        "payments: one debit per order, refunds match debits, wallets add up",
        "orders and wallets",
    );
    // customer -> (debited, refunded) according to the events
    let mut by_customer: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    for (order_id, history) in histories {
        invariant.checked += 1;
        let debits: Vec<(&Stored, &order_domain::PaymentDebited)> = history
            .events
            .iter()
            .filter_map(|(stored, event)| match event {
                OrderEvent::PaymentDebited(debit) => Some((*stored, debit)),
                _ => None,
            })
            .collect();
        let refunds: Vec<(&Stored, &order_domain::PaymentRefunded)> = history
            .events
            .iter()
            .filter_map(|(stored, event)| match event {
                OrderEvent::PaymentRefunded(refund) => Some((*stored, refund)),
                _ => None,
            })
            .collect();
        let failed = history
            .events
            .iter()
            .any(|(_, event)| matches!(event, OrderEvent::PaymentFailed(_)));
        invariant.expect(debits.len() <= 1 && refunds.len() <= 1, || {
            format!(
                "order {order_id}: {} debits and {} refunds in its history",
                debits.len(),
                refunds.len()
            )
        });
        let totals = by_customer.entry(&history.order.customer_id).or_default();
        totals.0 += debits
            .iter()
            .map(|(_, d)| d.amount.as_decimal())
            .sum::<Decimal>();
        totals.1 += refunds
            .iter()
            .map(|(_, r)| r.amount.as_decimal())
            .sum::<Decimal>();
        let row = snapshot.payments.get(order_id);
        match (debits.first(), row) {
            (Some((stored, debit)), Some(row)) => {
                invariant.expect(
                    row.amount == debit.amount.as_decimal()
                        && debit.amount == history.order.amount
                        && row.payment_id == debit.payment_id
                        && row.customer_id == debit.customer_id
                        && row.debit_event_id == Some(stored.event_id),
                    || {
                        format!(
                            "order {order_id}: payment row ({} {} {} debit event {:?}) differs from \
                             its paymentdebited ({} {} {} event {})",
                            row.amount,
                            row.payment_id,
                            row.customer_id,
                            row.debit_event_id,
                            debit.amount,
                            debit.payment_id,
                            debit.customer_id,
                            stored.event_id
                        )
                    },
                );
                match refunds.first() {
                    Some((stored, refund)) => {
                        invariant.expect(
                            row.status == "refunded"
                                && row.refund_event_id == Some(stored.event_id)
                                && refund.amount == debit.amount
                                && refund.payment_id == debit.payment_id,
                            || {
                                format!(
                                    "order {order_id}: refund {} of payment {} (event {}) vs payment \
                                     row {} with refund event {:?}",
                                    refund.amount,
                                    refund.payment_id,
                                    stored.event_id,
                                    row.status,
                                    row.refund_event_id
                                )
                            },
                        );
                    }
                    None => invariant.expect(
                        row.status == "debited" && row.refund_event_id.is_none(),
                        || {
                            format!(
                                "order {order_id} is {} without a refund event, but its payment \
                                 row is {}",
                                history.order.status, row.status
                            )
                        },
                    ),
                }
            }
            (Some(_), None) => invariant.violation(format!(
                "order {order_id} was debited (event) but paymentsdb has no payment"
            )),
            (None, Some(row)) if failed => invariant.expect(
                row.status == "failed" && row.debit_event_id.is_none(),
                || {
                    format!(
                        "order {order_id}: payment failed, but its row is {}",
                        row.status
                    )
                },
            ),
            (None, None) if failed => invariant.violation(format!(
                "order {order_id}: payment failed (event) but paymentsdb has no payment"
            )),
            // Decided but never appended: the customer cancelled first. The decision must not
            // keep any money: a debit is voided, a failure took nothing.
            (None, Some(row)) => invariant.expect(
                history.order.status == OrderStatus::Cancelled
                    && (row.status == "voided" || row.status == "failed"),
                || {
                    format!(
                        "order {order_id} is {} without a payment event, but its payment row is \
                         {} for {}",
                        history.order.status, row.status, row.amount
                    )
                },
            ),
            (None, None) => {}
        }
        invariant.expect(refunds.is_empty() || !debits.is_empty(), || {
            format!("order {order_id} was refunded without a debit")
        });
    }
    for (order_id, row) in &snapshot.payments {
        if !histories.contains_key(order_id) {
            invariant.violation(format!(
                "paymentsdb has a {} payment of {} for unknown order {order_id}",
                row.status, row.amount
            ));
        }
    }
    wallets(&mut invariant, snapshot, &by_customer, initial);
    invariant
}

/// Each wallet against the payment events (initial − debited + refunded) and against its own
/// payment rows (initial − what the `debited` ones keep).
fn wallets(
    invariant: &mut Invariant,
    snapshot: &Snapshot,
    by_customer: &BTreeMap<&str, (Decimal, Decimal)>,
    initial: Decimal,
) {
    let mut kept_by_rows: BTreeMap<&str, Decimal> = BTreeMap::new();
    for row in snapshot.payments.values() {
        if row.status == "debited" {
            *kept_by_rows.entry(&row.customer_id).or_default() += row.amount;
        }
    }
    for (customer, balance) in &snapshot.wallets {
        invariant.checked += 1;
        let (debited, refunded) = by_customer
            .get(customer.as_str())
            .copied()
            .unwrap_or_default();
        let expected = initial - debited + refunded;
        invariant.expect(*balance == expected, || {
            format!(
                "wallet {customer} holds {balance}, but {initial} − {debited} debited + {refunded} \
                 refunded = {expected}"
            )
        });
        let kept = kept_by_rows
            .get(customer.as_str())
            .copied()
            .unwrap_or_default();
        invariant.expect(*balance == initial - kept, || {
            format!("wallet {customer} holds {balance}, but its debited payments keep {kept}")
        });
        invariant.expect(*balance >= Decimal::ZERO, || {
            format!("wallet {customer} is negative: {balance}")
        });
    }
    for (customer, (debited, _)) in by_customer {
        invariant.expect(
            *debited == Decimal::ZERO || snapshot.wallets.contains_key(*customer),
            || format!("customer {customer} was debited but has no wallet"),
        );
    }
}

/// The business rules show in the outcomes: review approves up to the limit and rejects above it,
/// and nothing above the initial credit is ever debited.
fn rules(
    histories: &BTreeMap<Uuid, History<'_>>,
    initial: Decimal,
    review_max: Decimal,
) -> Invariant {
    let mut invariant = Invariant::new(
        "rules",
        "outcomes follow the rules (review limit, credit limit)",
        "orders",
    );
    for (order_id, history) in histories {
        invariant.checked += 1;
        let order = &history.order;
        let amount = order.amount.as_decimal();
        let reviewed = history.events.iter().find_map(|(_, event)| match event {
            OrderEvent::Approved(_) => Some(true),
            OrderEvent::Rejected(_) => Some(false),
            _ => None,
        });
        match reviewed {
            Some(true) => invariant.expect(amount <= review_max, || {
                format!("order {order_id} of {amount} was approved over the {review_max} limit")
            }),
            Some(false) => invariant.expect(amount > review_max, || {
                format!("order {order_id} of {amount} was rejected within the {review_max} limit")
            }),
            None => {}
        }
        invariant.expect(order.payment_id.is_none() || amount <= initial, || {
            format!("order {order_id} of {amount} was debited from a wallet of at most {initial}")
        });
        invariant.expect(
            order.status != OrderStatus::Pending || order.version == 1,
            || format!("order {order_id} is Pending at version {}", order.version),
        );
    }
    invariant
}

/// The watcher's cancels: each one ends an order that waited for the step it names at least that
/// step's deadline (between the stored times of the event that opened the step and of the cancel),
/// under the step's deterministic id; and no order was both approved and cancelled.
fn deadline_cancels(histories: &BTreeMap<Uuid, History<'_>>, deadlines: &Deadlines) -> Invariant {
    let mut invariant = Invariant::new(
        "deadlines",
        "the watcher cancelled only overdue orders, once each; no order approved and cancelled",
        "deadline cancels",
    );
    for (order_id, history) in histories {
        let approved = history
            .events
            .iter()
            .any(|(_, event)| matches!(event, OrderEvent::Approved(_)));
        let mut status = OrderStatus::Pending;
        let mut opened_at = None;
        for (stored, event) in &history.events {
            if let OrderEvent::Cancelled(cancel) = event {
                invariant.expect(!approved, || {
                    format!("order {order_id} was approved and cancelled")
                });
                // A deadline cancel is known by its id (one per order and step); its reason
                // must name the same step.
                let by_id = Step::ALL
                    .into_iter()
                    .find(|step| stored.event_id == deadline_event_id(*order_id, *step));
                let by_reason = deadline_step(&cancel.reason);
                if by_id.is_some() || by_reason.is_some() {
                    invariant.checked += 1;
                }
                invariant.expect(by_id == by_reason, || {
                    format!(
                        "order {order_id}: cancel {} ({:?}) with reason {:?}",
                        stored.event_id, by_id, cancel.reason
                    )
                });
                if let Some(step) = by_id {
                    invariant.expect(step.status() == status, || {
                        format!(
                            "order {order_id} was cancelled for its {step} while {status}: {}",
                            cancel.reason
                        )
                    });
                    let waited = opened_at.map(|at: OffsetDateTime| stored.created_at - at);
                    let deadline = deadlines.of(step);
                    invariant.expect(
                        waited.is_some_and(|waited| {
                            waited.as_seconds_f64() >= deadline.as_secs_f64()
                        }),
                        || {
                            format!(
                                "order {order_id} was cancelled for its {step} after {waited:?}, \
                                 before its {deadline:?} deadline"
                            )
                        },
                    );
                }
            }
            // The status before the next event, and when it began.
            status = match event {
                OrderEvent::Created(_) => OrderStatus::Pending,
                OrderEvent::PaymentDebited(_) => OrderStatus::Paid,
                OrderEvent::PaymentFailed(_) => OrderStatus::PaymentFailed,
                OrderEvent::Approved(_) => OrderStatus::Approved,
                OrderEvent::Rejected(_) => OrderStatus::Rejected,
                OrderEvent::Cancelled(_) => OrderStatus::Cancelled,
                OrderEvent::PaymentRefunded(_) => status,
            };
            if !matches!(event, OrderEvent::PaymentRefunded(_)) {
                opened_at = Some(stored.created_at);
            }
        }
    }
    invariant
}

/// The stream holds every committed event exactly once, nothing else, each aggregate's events in
/// version order, and the outbox is empty.
fn stream(snapshot: &Snapshot) -> Invariant {
    let mut invariant = Invariant::new(
        "stream",
        "ORDERS holds every committed event exactly once, in order; the outbox is empty",
        "events",
    );
    let committed: HashMap<Uuid, &Stored> =
        snapshot.events.iter().map(|e| (e.event_id, e)).collect();
    let mut seen: HashMap<Uuid, u32> = HashMap::new();
    let mut last_version: HashMap<&str, i64> = HashMap::new();
    for message in &snapshot.stream {
        let Some(id) = message.header.get(headers::MSG_ID) else {
            invariant.violation(format!(
                "message {} on {} has no {}",
                message.sequence,
                message.subject,
                headers::MSG_ID
            ));
            continue;
        };
        let Ok(event_id) = id.parse::<Uuid>() else {
            invariant.violation(format!(
                "message {} has {} {id:?}, not an event id",
                message.sequence,
                headers::MSG_ID
            ));
            continue;
        };
        *seen.entry(event_id).or_default() += 1;
        let Some(event) = committed.get(&event_id) else {
            invariant.violation(format!(
                "message {} carries event {event_id}, which the event store does not hold",
                message.sequence
            ));
            continue;
        };
        let previous = last_version.insert(&event.aggregate_id, event.version);
        invariant.expect(
            previous.is_none_or(|previous| previous < event.version),
            || {
                format!(
                    "order {}: version {} published (sequence {}) after version {}",
                    event.aggregate_id,
                    event.version,
                    message.sequence,
                    previous.unwrap_or_default()
                )
            },
        );
    }
    for event in &snapshot.events {
        invariant.checked += 1;
        match seen.get(&event.event_id).copied().unwrap_or(0) {
            1 => {}
            0 => invariant.violation(format!(
                "event {} (order {} v{} {}) never reached the stream",
                event.event_id, event.aggregate_id, event.version, event.event_type
            )),
            n => invariant.violation(format!(
                "event {} (order {} v{} {}) is on the stream {n} times",
                event.event_id, event.aggregate_id, event.version, event.event_type
            )),
        }
    }
    for event_id in &snapshot.outbox {
        invariant.violation(format!("event {event_id} is still in the outbox"));
    }
    invariant
}

#[cfg(test)]
mod tests {
    use super::super::load::{Kind, PlacedOrder};
    use super::*;

    fn failing(checked: &Checked) -> Vec<&'static str> {
        checked
            .invariants
            .iter()
            .filter(|i| !i.holds())
            .map(|i| i.key)
            .collect()
    }

    async fn execute(pipeline: &Pipeline, database: &str, statement: &str) {
        let pool = PgPool::connect(&pipeline.database_url(database))
            .await
            .expect(database);
        let done = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect(statement);
        assert_eq!(done.rows_affected(), 1, "{statement}");
        pool.close().await;
    }

    /// The checks are only worth their PASS if they see a broken pipeline: a settled run passes,
    /// then a read-model row, a wallet and the stream are tampered with and exactly those
    /// invariants fail.
    #[tokio::test]
    async fn the_checks_pass_a_settled_pipeline_and_catch_what_was_tampered_with() {
        let pipeline = Pipeline::start().await.expect("the pipeline starts");
        let mut load = LoadStats::default();
        for (customer, price, kind) in [
            ("tamper-a", "20.00", Kind::Small),
            ("tamper-b", "600.00", Kind::OverReviewLimit),
        ] {
            let order_id = pipeline.place(customer, price, 1).await;
            pipeline.wait_final(&order_id).await;
            load.placed.push(PlacedOrder {
                order_id: order_id.parse().expect("a UUID"),
                customer_id: customer.to_owned(),
                amount: price.parse().expect("a decimal"),
                kind,
            });
        }
        load.offered = 2;
        load.accepted = 2;
        let faults = Outcome::default();
        let drained = drain(&pipeline, &load, Duration::from_secs(30)).await;
        assert!(drained.complete, "{:?}", drained.left);

        let clean = check(&pipeline, &load, &faults, &drained, &Deadlines::DEFAULT)
            .await
            .expect("the checks run");
        assert_eq!(failing(&clean), Vec::<&str>::new(), "a settled pipeline");
        assert_eq!(clean.orders, 2);
        assert_eq!(clean.finals.get("Approved"), Some(&1));
        assert_eq!(clean.finals.get("Rejected"), Some(&1));
        assert_eq!(clean.refunded, 1);

        let approved = load.placed[0].order_id;
        execute(
            &pipeline,
            "ordersdb",
            &format!("UPDATE orders SET status = 'Paid' WHERE order_id = '{approved}'"),
        )
        .await;
        execute(
            &pipeline,
            "paymentsdb",
            "UPDATE wallets SET balance = balance + 1 WHERE customer_id = 'tamper-b'",
        )
        .await;
        let stream = pipeline
            .jetstream()
            .await
            .get_stream(STREAM)
            .await
            .expect("the stream");
        assert!(stream.delete_message(1).await.expect("deleted"));

        let tampered = check(&pipeline, &load, &faults, &drained, &Deadlines::DEFAULT)
            .await
            .expect("the checks run");
        assert_eq!(
            failing(&tampered),
            ["final", "read-model", "payments", "stream"],
            "each tampering is seen by its invariant"
        );
    }

    #[test]
    fn an_order_is_settled_when_final_and_refunded_where_it_was_debited() {
        let paid = Some(Uuid::nil());
        assert!(settled("Approved", false, paid));
        assert!(settled("PaymentFailed", false, None));
        assert!(
            !settled("Rejected", false, paid),
            "a rejection owes a refund"
        );
        assert!(settled("Rejected", true, paid));
        assert!(settled("Cancelled", false, None), "nothing was debited");
        assert!(
            !settled("Cancelled", false, paid),
            "a paid cancel owes a refund"
        );
        assert!(settled("Cancelled", true, paid));
        assert!(!settled("Pending", false, None));
        assert!(!settled("Paid", false, paid));
    }

    #[test]
    fn an_invariant_counts_every_violation_and_quotes_the_first_few() {
        let mut invariant = Invariant::new("x", "x", "things");
        for i in 0..8 {
            invariant.expect(i % 2 == 0, || format!("odd {i}"));
        }
        assert_eq!(invariant.violations, 4);
        assert_eq!(invariant.examples.len(), 4);
        assert!(!invariant.holds());
        for i in 0..4 {
            invariant.violation(format!("more {i}"));
        }
        assert_eq!(invariant.violations, 8);
        assert_eq!(invariant.examples.len(), EXAMPLES);
    }
}
