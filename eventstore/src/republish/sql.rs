//! The command's reads of the event store: positions in commit order `(created_at, event_id)`,
//! the order `GetEventsStream` serves every event in, and which events still have an outbox row.

use std::collections::HashSet;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// A position in the store's commit order.
pub type Key = (OffsetDateTime, Uuid);

/// The newest event's key.
pub async fn newest(pool: &PgPool) -> Result<Option<Key>, sqlx::Error> {
    sqlx::query_as(
        "SELECT created_at, event_id FROM events ORDER BY created_at DESC, event_id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

/// The key of the `position`-th event (1 = the oldest).
pub async fn at_position(pool: &PgPool, position: u64) -> Result<Option<Key>, sqlx::Error> {
    let offset = i64::try_from(position.saturating_sub(1)).unwrap_or(i64::MAX);
    sqlx::query_as(
        "SELECT created_at, event_id FROM events ORDER BY created_at, event_id OFFSET $1 LIMIT 1",
    )
    .bind(offset)
    .fetch_optional(pool)
    .await
}

/// How many events are at or before `key`: the position of the next one is this plus one.
pub async fn count_up_to(pool: &PgPool, key: Key) -> Result<u64, sqlx::Error> {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE (created_at, event_id) <= ($1, $2)")
            .bind(key.0)
            .bind(key.1)
            .fetch_one(pool)
            .await?;
    Ok(u64::try_from(n).unwrap_or_default())
}

/// Those of `ids` that still have an outbox row.
pub async fn in_outbox(pool: &PgPool, ids: &[Uuid]) -> Result<HashSet<Uuid>, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, Uuid>("SELECT event_id FROM outbox WHERE event_id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect(),
    )
}

/// The newest `limit` events without an outbox row: JetStream acknowledged each, so the stream
/// must hold them.
pub async fn newest_published(pool: &PgPool, limit: i64) -> Result<Vec<Key>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.created_at, e.event_id FROM events e \
         WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.event_id) \
         ORDER BY e.created_at DESC, e.event_id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// How many events have no outbox row (JetStream acknowledged them), counted up to `cap`, in one
/// statement: one snapshot.
pub async fn count_published(pool: &PgPool, cap: i64) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM events e \
         WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.event_id) LIMIT $1) AS published",
    )
    .bind(cap)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or_default())
}
