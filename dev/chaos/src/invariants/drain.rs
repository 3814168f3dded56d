//! Waiting for the pipeline to drain after the load, and the connections the checks read through.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use pipeline_runtime::stream::{CONSUMERS, STREAM};
use sqlx::PgPool;
use uuid::Uuid;

use crate::load::LoadStats;
use e2e_tests::{Pipeline, is_final};

/// Connections to everything the checks read.
pub(crate) struct Stores {
    pub(crate) events: PgPool,
    pub(crate) orders: PgPool,
    pub(crate) payments: PgPool,
    pub(crate) js: jetstream::Context,
}

impl Stores {
    pub(crate) async fn connect(pipeline: &Pipeline) -> anyhow::Result<Stores> {
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

    pub(crate) async fn close(self) {
        self.events.close().await;
        self.orders.close().await;
        self.payments.close().await;
    }
}

/// Final, and refunded when it has to be: a Rejected order always was debited; a Cancelled one
/// was when it holds a payment id.
pub(crate) fn settled(status: &str, refunded: bool, payment_id: Option<Uuid>) -> bool {
    is_final(status)
        && (status != "Rejected" || refunded)
        && (status != "Cancelled" || payment_id.is_none() || refunded)
}

/// How the wait for the pipeline to drain ended, as the report shows it.
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
    // Connected on the first look that can: the pipeline may still be coming back from a fault.
    let mut stores: Option<Stores> = None;
    let drained = testkit::drain::until_drained(timeout, Duration::from_secs(1), async || {
        let connected = match stores.take() {
            Some(connected) => connected,
            None => Stores::connect(pipeline)
                .await
                .context("could not connect")?,
        };
        let left = still_busy(&connected, load).await;
        stores = Some(connected);
        left
    })
    .await;
    if let Some(stores) = stores {
        stores.close().await;
    }
    Drain {
        seconds: drained.after().as_secs_f64(),
        complete: drained.is_drained(),
        left: (!drained.is_drained()).then(|| drained.pending().join("; ")),
    }
}

/// What is not done yet (nothing when the pipeline is idle with every order settled): orders not
/// settled, then the outbox and the workers' consumers.
pub(crate) async fn still_busy(stores: &Stores, load: &LoadStats) -> anyhow::Result<Vec<String>> {
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
    left.extend(testkit::drain::outbox(&stores.events).await?);
    let durables: Vec<&str> = CONSUMERS.iter().map(|spec| spec.durable).collect();
    left.extend(testkit::drain::consumers(&stores.js, STREAM, &durables).await?);
    Ok(left)
}
