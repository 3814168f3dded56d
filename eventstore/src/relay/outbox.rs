//! The relay's statements on the outbox: claiming rows, asking for the lowest versions still there,
//! and deleting the rows whose events JetStream acknowledged.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{DELETE_RETRY, HELD_CAPACITY};

/// Deletes the rows of acked events, everything queued in one statement, outside any transaction
/// that publishes. A row whose delete keeps failing is published again by a sweep (and dropped by
/// JetStream as a duplicate).
pub(super) async fn delete_acked(pool: PgPool, mut acked: mpsc::UnboundedReceiver<Vec<Uuid>>) {
    let mut pending: Vec<Uuid> = Vec::new();
    let mut stopping = false;
    let mut healthy = true;
    loop {
        if pending.is_empty() {
            match acked.recv().await {
                Some(ids) => pending = ids,
                None => return,
            }
        }
        loop {
            match acked.try_recv() {
                Ok(ids) => pending.extend(ids),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
            }
        }
        let deleted = pipeline_runtime::db::retry(|| {
            sqlx::query("DELETE FROM outbox WHERE event_id = ANY($1)")
                .bind(&pending)
                .execute(&pool)
        })
        .await;
        match deleted {
            Ok(_) => {
                pending.clear();
                if !healthy {
                    tracing::info!("outbox relay deleting acked rows again");
                    healthy = true;
                }
            }
            Err(err) => {
                if healthy {
                    tracing::warn!(error = %err, "cannot delete acked outbox rows; they will be published again");
                    healthy = false;
                }
                if stopping {
                    return;
                }
                pending.truncate(HELD_CAPACITY * 4);
                tokio::time::sleep(DELETE_RETRY).await;
            }
        }
    }
}

/// Claims the rows of `held` and those older than `ripe` (at most `limit`), renewing their claim.
pub(super) async fn claim(
    pool: &PgPool,
    ripe: Duration,
    held: &[Uuid],
    limit: i64,
) -> Result<Vec<(Uuid, String, i64)>, sqlx::Error> {
    let ripe_ms = i64::try_from(ripe.as_millis()).unwrap_or(i64::MAX);
    sqlx::query_as(
        "UPDATE outbox SET created_at = now() WHERE event_id IN ( \
             SELECT event_id FROM outbox \
             WHERE created_at <= now() - $1 * INTERVAL '1 millisecond' OR event_id = ANY($2) \
             ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING event_id, aggregate_id, aggregate_version",
    )
    .bind(ripe_ms)
    .bind(held)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The lowest version each of these aggregates has in the outbox (aggregates with no row are absent).
pub(super) async fn lowest_versions(
    pool: &PgPool,
    aggregates: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    Ok(sqlx::query_as::<_, (String, i64)>(
        "SELECT aggregate_id, MIN(aggregate_version) FROM outbox \
         WHERE aggregate_id = ANY($1) GROUP BY aggregate_id",
    )
    .bind(aggregates)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect())
}
