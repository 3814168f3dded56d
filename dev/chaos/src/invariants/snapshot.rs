//! Everything the checks read, taken once the pipeline is idle: the event store, the read model,
//! the payments database and the streams.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use order_readmodel::{OrderRow, order_columns};
use pipeline_runtime::deadletter::dl_headers;
use pipeline_runtime::stream::{DEAD_LETTER_STREAM, STREAM, headers};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::types::time::OffsetDateTime;
use uuid::Uuid;

use super::*;

/// An event as the event store keeps it.
pub(crate) struct Stored {
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) aggregate_type: String,
    pub(crate) version: i64,
    pub(crate) data: Value,
    pub(crate) stream: String,
    pub(crate) created_at: OffsetDateTime,
}

pub(crate) struct ItemRow {
    pub(crate) code: String,
    pub(crate) name: String,
    pub(crate) unit_price: Decimal,
    pub(crate) quantity: i64,
}

pub(crate) struct PaymentRow {
    pub(crate) payment_id: Uuid,
    pub(crate) customer_id: String,
    pub(crate) amount: Decimal,
    pub(crate) status: String,
    pub(crate) debit_event_id: Option<Uuid>,
    pub(crate) refund_event_id: Option<Uuid>,
}

/// A message on a stream: its sequence and the headers the checks read.
pub(crate) struct Message {
    pub(crate) sequence: u64,
    pub(crate) subject: String,
    pub(crate) header: HashMap<&'static str, String>,
}

/// Everything the checks read, taken once the pipeline is idle.
pub(crate) struct Snapshot {
    pub(crate) events: Vec<Stored>,
    pub(crate) outbox: Vec<Uuid>,
    pub(crate) orders: HashMap<Uuid, OrderRow>,
    pub(crate) items: HashMap<Uuid, Vec<ItemRow>>,
    pub(crate) payments: HashMap<Uuid, PaymentRow>,
    pub(crate) wallets: BTreeMap<String, Decimal>,
    pub(crate) stream: Vec<Message>,
    pub(crate) dead_letters: Vec<Message>,
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
    pub(crate) async fn take(stores: &Stores) -> anyhow::Result<Snapshot> {
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
pub(crate) const READ_HEADERS: [&str; 5] = [
    headers::MSG_ID,
    headers::AGGREGATE_ID,
    headers::AGGREGATE_VERSION,
    dl_headers::REASON,
    dl_headers::WORKER,
];

/// Every message of a stream, read with an ordered consumer up to the last sequence it had when
/// the read began.
pub(crate) async fn read_stream(
    js: &jetstream::Context,
    name: &str,
) -> anyhow::Result<Vec<Message>> {
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
