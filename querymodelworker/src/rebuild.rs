//! Rebuilding the read model from the whole event store.

use anyhow::Context as _;
use eventstore_proto::GetEventsRequest;
use futures::StreamExt as _;
use order_domain::AGGREGATE_TYPE;
use pipeline_runtime::eventstore::envelope;

use crate::projection::{Outcome, ProjectionError, Projector};
use crate::{Config, connect};

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events read from the event store.
    pub events: u64,
    /// Events that moved a row (gaps filled along the way count once, with the event that found them).
    pub applied: u64,
    /// Events already applied (filled from a gap before they came by).
    pub duplicates: u64,
    /// Events of other aggregate types, left alone.
    pub skipped: u64,
    /// Events the order's state machine refused, by event id, with the reason; the live worker would
    /// have dead-lettered them.
    pub refused: Vec<(String, String)>,
    /// Orders in the read model at the end.
    pub orders: i64,
}

/// Empties the read model at `config.orders_database_url` (both tables, in one transaction) and
/// replays every event of the event store into it, in commit order, with the live worker's code.
///
/// The database must already hold the schema (run the bootstrapper against it first). The live
/// worker may keep running meanwhile: both only apply an event at the next version, so whichever
/// comes second sees a duplicate; readers see orders vanish until the replay reaches them, which is
/// why the operator may prefer to rebuild into a fresh database and then switch the services to it.
pub async fn rebuild(config: &Config) -> anyhow::Result<RebuildReport> {
    let projector = connect(config)?;
    empty(&projector)
        .await
        .context("emptying the read model (has the bootstrapper run against this database?)")?;
    let mut grpc = projector.event_store().grpc();
    let mut stream = grpc
        .get_events_stream(GetEventsRequest {
            follow: false,
            ..Default::default()
        })
        .await
        .context("reading the event store")?
        .into_inner();
    let mut report = RebuildReport::default();
    while let Some(event) = stream.next().await {
        let event = event.context("reading the event store")?;
        report.events += 1;
        let envelope = envelope(event).context("reading the event store")?;
        if envelope.aggregate_type != AGGREGATE_TYPE {
            report.skipped += 1;
            continue;
        }
        let event_id = envelope.event_id.to_string();
        match projector.project(envelope).await {
            Ok(Outcome::Applied { .. }) => report.applied += 1,
            Ok(Outcome::Duplicate { .. }) => report.duplicates += 1,
            Err(ProjectionError::Refused(reason)) => {
                tracing::warn!(event.id = %event_id, reason, "event refused; skipped");
                report.refused.push((event_id, reason));
            }
            Err(err) => {
                return Err(err).with_context(|| format!("applying event {event_id}"));
            }
        }
    }
    let (orders,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders")
        .fetch_one(projector.pool())
        .await
        .context("counting orders")?;
    report.orders = orders;
    projector.pool().close().await;
    Ok(report)
}

async fn empty(projector: &Projector) -> Result<(), sqlx::Error> {
    // DELETE rather than TRUNCATE: CockroachDB runs TRUNCATE as a schema change, not inside a
    // transaction with other statements.
    pipeline_runtime::db::retry(|| async {
        let mut tx = projector.pool().begin().await?;
        sqlx::query("DELETE FROM order_items")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM orders").execute(&mut *tx).await?;
        tx.commit().await
    })
    .await
}
