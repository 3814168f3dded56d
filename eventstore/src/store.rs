//! SQL of the event store: the group-commit append transaction and the reads.
//!
//! Only SQL that CockroachDB and PostgreSQL both document: `= ANY($1)`, multi-array `UNNEST`,
//! `ON CONFLICT DO NOTHING`, `FOR UPDATE SKIP LOCKED`, an `INSERT … RETURNING` in `WITH`, a
//! correlated subquery with `LIMIT`, `bool_and` (the last three are new and not yet run on
//! CockroachDB).

use std::collections::{BTreeMap, HashMap};

use pipeline_runtime::db;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{EventToStore, StoredAt, StoredEvent};

const EVENT_COLUMNS: &str = "event_id, event_type, aggregate_id, aggregate_type, aggregate_version, \
     stream, event_data::TEXT AS event_data, metadata::TEXT AS metadata, created_at";

/// The last version of the aggregate `$aggregate` names (an SQL expression), NULL for none: one
/// backward step in (aggregate_id, aggregate_version), a plan that does not depend on statistics.
/// Before `events` is first analyzed, `= ANY … GROUP BY` was planned as a bitmap scan over every
/// version (a quarter of the database's statement time in a saturated run on a fresh database).
macro_rules! last_version {
    ($aggregate:literal) => {
        concat!(
            "(SELECT e.aggregate_version FROM events e WHERE e.aggregate_id = ",
            $aggregate,
            " ORDER BY e.aggregate_version DESC LIMIT 1)"
        )
    };
}

/// The common tail of both inserts: the events of `$1`–`$8` (one array per column, see [`Columns`])
/// with `$clause` (the fast path's check, the careful way's `ON CONFLICT`), and the outbox rows of
/// those inserted, in the same statement; it returns their `created_at`.
macro_rules! events_and_outbox {
    ($clause:literal) => {
        concat!(
            "inserted AS ( \
                 INSERT INTO events (event_id, event_type, aggregate_id, aggregate_type, \
                                     aggregate_version, event_data, stream, metadata, created_at) \
                 SELECT t.id, t.ty, t.agg, t.agg_ty, t.ver, t.data::JSONB, t.stream, t.meta::JSONB, now() \
                 FROM UNNEST($1::UUID[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::INT8[], $6::TEXT[], \
                             $7::TEXT[], $8::TEXT[]) \
                      AS t(id, ty, agg, agg_ty, ver, data, stream, meta) ",
            $clause,
            " RETURNING event_id, aggregate_id, aggregate_version, created_at), \
             outboxed AS ( \
                 INSERT INTO outbox (event_id, aggregate_id, aggregate_version, created_at) \
                 SELECT event_id, aggregate_id, aggregate_version, created_at FROM inserted) \
             SELECT created_at FROM inserted"
        )
    };
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_id: Uuid,
    event_type: String,
    aggregate_id: String,
    aggregate_type: String,
    aggregate_version: i64,
    stream: String,
    event_data: String,
    metadata: String,
    created_at: OffsetDateTime,
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = sqlx::Error;

    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        let decode = |err: serde_json::Error| sqlx::Error::Decode(Box::new(err));
        Ok(StoredEvent {
            event_id: row.event_id,
            event_type: row.event_type,
            aggregate_id: row.aggregate_id,
            aggregate_type: row.aggregate_type,
            aggregate_version: row.aggregate_version,
            stream: row.stream,
            event_data: serde_json::from_str(&row.event_data).map_err(decode)?,
            metadata: serde_json::from_str::<BTreeMap<String, String>>(&row.metadata)
                .map_err(decode)?,
            created_at: row.created_at,
        })
    }
}

fn into_events(rows: Vec<EventRow>) -> Result<Vec<StoredEvent>, sqlx::Error> {
    rows.into_iter().map(StoredEvent::try_from).collect()
}

/// What the append transaction decided for one request of a batch.
#[derive(Debug)]
#[cfg_attr(test, derive(PartialEq))]
pub enum Decision {
    /// Insert at this version.
    Insert { version: i64 },
    /// Already stored (before this batch, or earlier in it): answer with this outcome.
    Done(Result<StoredAt, StoreError>),
}

/// Decides every request of a batch, in order, against what the database holds: `existing` events
/// with the batch's ids and the `current` version of each of its aggregates. Pure, so the rules of
/// idempotency and optimistic concurrency are tested without a database.
pub fn plan(
    batch: &[EventToStore],
    existing: &HashMap<Uuid, StoredEvent>,
    current: &HashMap<String, i64>,
) -> Vec<Decision> {
    let mut versions = current.clone();
    // Events inserted by this batch so far, to answer a repeat inside the same batch.
    let mut planned: HashMap<Uuid, (usize, i64)> = HashMap::new();
    let mut decisions = Vec::with_capacity(batch.len());
    for (index, event) in batch.iter().enumerate() {
        let decision = if let Some(stored) = existing.get(&event.event_id) {
            Decision::Done(if event.same_event_as(stored) {
                Ok(StoredAt {
                    version: stored.aggregate_version,
                    duplicate: true,
                })
            } else {
                Err(StoreError::AlreadyExists(event.event_id))
            })
        } else if let Some(&(first, version)) = planned.get(&event.event_id) {
            let first = &batch[first];
            Decision::Done(if first.same_content(event) {
                Ok(StoredAt {
                    version,
                    duplicate: true,
                })
            } else {
                Err(StoreError::AlreadyExists(event.event_id))
            })
        } else {
            let actual = versions.get(&event.aggregate_id).copied().unwrap_or(0);
            if actual == event.expected_version {
                let version = actual + 1;
                versions.insert(event.aggregate_id.clone(), version);
                planned.insert(event.event_id, (index, version));
                Decision::Insert { version }
            } else {
                Decision::Done(Err(StoreError::VersionConflict {
                    aggregate_id: event.aggregate_id.clone(),
                    expected: event.expected_version,
                    actual,
                }))
            }
        };
        decisions.push(decision);
    }
    decisions
}

/// What one committed append transaction decided.
pub struct Committed {
    /// One per event of the batch, in order. `Ok` and not `duplicate`: inserted by this transaction.
    pub outcomes: Vec<Result<StoredAt, StoreError>>,
    /// The `created_at` of the inserted events (the transaction's `now()`); `None` when none was.
    pub created_at: Option<OffsetDateTime>,
}

/// One attempt at committing a batch. `Ok(None)` means a concurrent writer inserted a conflicting row
/// between our reads and our insert: nothing was committed and the batch should be planned again.
///
/// Most batches are new events at the versions their callers expect: those commit on the fast path,
/// one statement in its own transaction ([`insert_as_expected`]). Anything else, and a fast path
/// that inserted nothing, goes the careful way, a transaction that reads the batch's ids and
/// versions first, so that a repeated event is answered as the duplicate it is rather than as a
/// conflict.
pub async fn try_append(
    pool: &PgPool,
    batch: &[EventToStore],
) -> Result<Option<Committed>, sqlx::Error> {
    if let Some(plain) = as_expected(batch)
        && let Some(committed) = insert_as_expected(pool, batch, &plain).await?
    {
        return Ok(Some(committed));
    }
    careful(pool, batch).await
}

/// A batch that is a plain run of new events: what it expects and the versions it would get.
#[derive(Debug, PartialEq)]
struct AsExpected<'a> {
    /// Each aggregate of the batch once, with the version its first event expects.
    aggregates: Vec<&'a str>,
    expected: Vec<i64>,
    /// The version of each event of the batch, in order.
    versions: Vec<i64>,
}

/// The batch as a plain run of new events: each aggregate's first event expects the version found
/// (it stands for the aggregate), and every later event of the aggregate in the batch expects the
/// version the one before it makes. `None` when the batch itself conflicts or repeats an event:
/// only the careful way answers those.
fn as_expected(batch: &[EventToStore]) -> Option<AsExpected<'_>> {
    let mut aggregates = Vec::new();
    let mut expected = Vec::new();
    let mut assumed: HashMap<String, i64> = HashMap::new();
    for event in batch {
        if !assumed.contains_key(&event.aggregate_id) {
            assumed.insert(event.aggregate_id.clone(), event.expected_version);
            aggregates.push(event.aggregate_id.as_str());
            expected.push(event.expected_version);
        }
    }
    let versions = plan(batch, &HashMap::new(), &assumed)
        .into_iter()
        .map(|decision| match decision {
            Decision::Insert { version } => Some(version),
            Decision::Done(_) => None,
        })
        .collect::<Option<Vec<i64>>>()?;
    Some(AsExpected {
        aggregates,
        expected,
        versions,
    })
}

/// The fast path: inserts the batch (events and outbox rows) at the versions it expects, in one
/// statement that is its own transaction (one round trip, no `BEGIN` or `COMMIT` of ours), only if
/// every aggregate is at its expected version; all or nothing. `None` when nothing was inserted: an
/// aggregate was elsewhere (a conflict, or a repeat of a stored event), or a concurrent writer's
/// row made the insert fail on a unique key (the statement then wrote nothing).
///
/// The check and the insert are one statement, so they share a snapshot: a writer that commits
/// the same key after it is caught by the unique keys, since this insert has no `ON CONFLICT`.
async fn insert_as_expected(
    pool: &PgPool,
    batch: &[EventToStore],
    plain: &AsExpected<'_>,
) -> Result<Option<Committed>, sqlx::Error> {
    let rows: Vec<(&EventToStore, i64)> =
        batch.iter().zip(plain.versions.iter().copied()).collect();
    let columns = Columns::of(&rows);
    let inserted: Result<Vec<OffsetDateTime>, sqlx::Error> = columns
        .bind(sqlx::query_scalar(concat!(
            "WITH due AS (SELECT bool_and(COALESCE(",
            last_version!("a.aggregate_id"),
            ", 0) = a.expected) AS ok \
                 FROM UNNEST($9::TEXT[], $10::INT8[]) AS a(aggregate_id, expected)), ",
            events_and_outbox!("WHERE (SELECT ok FROM due)")
        )))
        .bind(&plain.aggregates)
        .bind(&plain.expected)
        .fetch_all(pool)
        .await;
    let inserted = match inserted {
        Ok(inserted) => inserted,
        Err(err) if db::sqlstate(&err).as_deref() == Some(db::UNIQUE_VIOLATION) => return Ok(None),
        Err(err) => return Err(err),
    };
    if inserted.len() < rows.len() {
        // All or nothing: the check failed, so nothing was inserted.
        return Ok(None);
    }
    Ok(Some(Committed {
        outcomes: rows
            .iter()
            .map(|(_, version)| {
                Ok(StoredAt {
                    version: *version,
                    duplicate: false,
                })
            })
            .collect(),
        created_at: inserted.first().copied(),
    }))
}

/// The careful way: one transaction that reads the stored events with the batch's ids and each
/// aggregate's version, plans every outcome, and inserts what is new.
async fn careful(pool: &PgPool, batch: &[EventToStore]) -> Result<Option<Committed>, sqlx::Error> {
    // READ COMMITTED: the reads only plan; the keys decide. `event_id` and (aggregate_id,
    // aggregate_version) are unique and the insert is ON CONFLICT DO NOTHING, so a writer that
    // slipped in between our reads and our insert makes the insert count short, and the attempt is
    // rolled back.
    let mut tx = db::begin_guarded(pool).await?;
    let mut aggregates: Vec<&str> = batch.iter().map(|e| e.aggregate_id.as_str()).collect();
    aggregates.sort_unstable();
    aggregates.dedup();

    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
    let existing: HashMap<Uuid, StoredEvent> = events_by_ids(&mut *tx, &ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id, e))
        .collect();
    let current: HashMap<String, i64> = sqlx::query_as::<_, (String, Option<i64>)>(concat!(
        "SELECT t.aggregate_id, ",
        last_version!("t.aggregate_id"),
        " FROM UNNEST($1::TEXT[]) AS t(aggregate_id)"
    ))
    .bind(&aggregates)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .filter_map(|(aggregate, version)| version.map(|version| (aggregate, version)))
    .collect();

    let decisions = plan(batch, &existing, &current);
    let inserts: Vec<(&EventToStore, i64)> = batch
        .iter()
        .zip(&decisions)
        .filter_map(|(event, decision)| match decision {
            Decision::Insert { version } => Some((event, *version)),
            Decision::Done(_) => None,
        })
        .collect();
    let mut created_at = None;
    if !inserts.is_empty() {
        let (inserted, at) = insert(&mut tx, &inserts).await?;
        if inserted < inserts.len() {
            tx.rollback().await?;
            return Ok(None);
        }
        created_at = at;
    }
    tx.commit().await?;
    Ok(Some(Committed {
        outcomes: decisions
            .into_iter()
            .map(|decision| match decision {
                Decision::Insert { version } => Ok(StoredAt {
                    version,
                    duplicate: false,
                }),
                Decision::Done(outcome) => outcome,
            })
            .collect(),
        created_at,
    }))
}

/// The columns of rows to insert, one array each, for `UNNEST`.
struct Columns<'a> {
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    aggregate_ids: Vec<&'a str>,
    aggregate_types: Vec<&'a str>,
    versions: Vec<i64>,
    data: Vec<String>,
    streams: Vec<&'a str>,
    metadata: Vec<String>,
}

impl<'a> Columns<'a> {
    /// Binds the columns as `$1`–`$8` of [`events_and_outbox!`].
    fn bind<'q, O>(
        &'q self,
        query: QueryScalar<'q, Postgres, O, PgArguments>,
    ) -> QueryScalar<'q, Postgres, O, PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.aggregate_ids)
            .bind(&self.aggregate_types)
            .bind(&self.versions)
            .bind(&self.data)
            .bind(&self.streams)
            .bind(&self.metadata)
    }

    fn of(rows: &[(&'a EventToStore, i64)]) -> Self {
        Columns {
            ids: rows.iter().map(|(e, _)| e.event_id).collect(),
            types: rows.iter().map(|(e, _)| e.event_type.as_str()).collect(),
            aggregate_ids: rows.iter().map(|(e, _)| e.aggregate_id.as_str()).collect(),
            aggregate_types: rows
                .iter()
                .map(|(e, _)| e.aggregate_type.as_str())
                .collect(),
            versions: rows.iter().map(|(_, v)| *v).collect(),
            data: rows.iter().map(|(e, _)| e.event_data.to_string()).collect(),
            streams: rows.iter().map(|(e, _)| e.stream.as_str()).collect(),
            metadata: rows
                .iter()
                .map(|(e, _)| serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".into()))
                .collect(),
        }
    }
}

/// Inserts events and their outbox rows; returns how many events were new and their `created_at`
/// (one value: `now()` is the transaction's start time), which the relay publishes from memory.
async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(&EventToStore, i64)],
) -> Result<(usize, Option<OffsetDateTime>), sqlx::Error> {
    let columns = Columns::of(rows);
    // ON CONFLICT DO NOTHING covers both keys: the event id (a replay, or a racing original) and
    // (aggregate_id, aggregate_version) (a writer racing us). Fewer rows back means a race was lost.
    // The outbox rows are those of the events inserted, in the same statement (one round trip).
    let inserted: Vec<OffsetDateTime> = columns
        .bind(sqlx::query_scalar(concat!(
            "WITH ",
            events_and_outbox!("ON CONFLICT DO NOTHING")
        )))
        .fetch_all(&mut **tx)
        .await?;
    let created_at = inserted.first().copied();
    let inserted = inserted.len();
    Ok((inserted, created_at))
}

/// The events with these ids (those that exist), in no particular order.
pub async fn events_by_ids<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    ids: &[Uuid],
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    into_events(
        sqlx::query_as::<_, EventRow>(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(executor)
        .await?,
    )
}

/// One event by id.
pub async fn event_by_id(
    pool: &PgPool,
    event_id: Uuid,
) -> Result<Option<StoredEvent>, sqlx::Error> {
    sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1"
    ))
    .bind(event_id)
    .fetch_optional(pool)
    .await?
    .map(StoredEvent::try_from)
    .transpose()
}

/// Events of one aggregate with `aggregate_version >= from_version`, in version order, at most `limit`.
pub async fn aggregate_events(
    pool: &PgPool,
    aggregate_id: &str,
    from_version: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    into_events(
        sqlx::query_as::<_, EventRow>(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = $1 AND aggregate_version >= $2 \
             ORDER BY aggregate_version LIMIT $3"
        ))
        .bind(aggregate_id)
        .bind(from_version)
        .bind(limit)
        .fetch_all(pool)
        .await?,
    )
}

/// Events of every aggregate after the position `(created_at, event_id)`, in that order, at most `limit`.
pub async fn all_events_after(
    pool: &PgPool,
    after: (OffsetDateTime, Uuid),
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    into_events(
        sqlx::query_as::<_, EventRow>(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE (created_at, event_id) > ($1, $2) \
             ORDER BY created_at, event_id LIMIT $3"
        ))
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(pool)
        .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PartialEq for StoreError {
        fn eq(&self, other: &Self) -> bool {
            self.to_string() == other.to_string()
        }
    }

    fn new_event(aggregate: &str, expected: i64) -> EventToStore {
        EventToStore {
            event_id: Uuid::new_v4(),
            event_type: "created".into(),
            aggregate_id: aggregate.into(),
            aggregate_type: "order".into(),
            stream: "ORDERS".into(),
            event_data: serde_json::json!({"n": expected}),
            metadata: BTreeMap::new(),
            expected_version: expected,
        }
    }

    fn stored(event: &EventToStore, version: i64) -> StoredEvent {
        StoredEvent {
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_version: version,
            stream: event.stream.clone(),
            event_data: event.event_data.clone(),
            metadata: BTreeMap::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_plain_run_of_new_events_expects_each_aggregates_first_expectation() {
        let batch = [
            new_event("a", 3),
            new_event("b", 0),
            new_event("a", 4),
            new_event("a", 5),
        ];
        assert_eq!(
            as_expected(&batch),
            Some(AsExpected {
                aggregates: vec!["a", "b"],
                expected: vec![3, 0],
                versions: vec![4, 1, 5, 6],
            })
        );
    }

    #[test]
    fn a_batch_that_conflicts_or_repeats_itself_is_not_a_plain_run() {
        // The second event of `a` expects the version the first one makes no more.
        assert_eq!(as_expected(&[new_event("a", 3), new_event("a", 3)]), None);
        assert_eq!(as_expected(&[new_event("a", 3), new_event("a", 7)]), None);
        // The same event twice: the careful way answers the second as a duplicate.
        let event = new_event("a", 0);
        assert_eq!(as_expected(&[event.clone(), event]), None);
    }

    #[test]
    fn a_new_aggregate_starts_at_version_one() {
        let batch = [new_event("a", 0)];
        assert_eq!(
            plan(&batch, &HashMap::new(), &HashMap::new()),
            [Decision::Insert { version: 1 }]
        );
    }

    #[test]
    fn appends_to_one_aggregate_in_one_batch_chain_their_versions() {
        let batch = [new_event("a", 3), new_event("a", 4), new_event("a", 4)];
        let current = HashMap::from([("a".to_owned(), 3)]);
        let decisions = plan(&batch, &HashMap::new(), &current);
        assert_eq!(decisions[0], Decision::Insert { version: 4 });
        assert_eq!(decisions[1], Decision::Insert { version: 5 });
        assert_eq!(
            decisions[2],
            Decision::Done(Err(StoreError::VersionConflict {
                aggregate_id: "a".into(),
                expected: 4,
                actual: 5
            }))
        );
    }

    #[test]
    fn a_stored_event_appended_again_answers_its_original_version() {
        let event = new_event("a", 0);
        let existing = HashMap::from([(event.event_id, stored(&event, 1))]);
        let current = HashMap::from([("a".to_owned(), 7)]);
        assert_eq!(
            plan(&[event], &existing, &current),
            [Decision::Done(Ok(StoredAt {
                version: 1,
                duplicate: true
            }))]
        );
    }

    #[test]
    fn another_event_under_a_used_id_already_exists() {
        let event = new_event("a", 0);
        let mut other = new_event("a", 1);
        other.event_id = event.event_id;
        let existing = HashMap::from([(event.event_id, stored(&event, 1))]);
        assert_eq!(
            plan(&[other], &existing, &HashMap::new()),
            [Decision::Done(Err(StoreError::AlreadyExists(
                event.event_id
            )))]
        );
    }

    #[test]
    fn the_same_event_twice_in_one_batch_is_inserted_once() {
        let event = new_event("a", 0);
        let decisions = plan(&[event.clone(), event], &HashMap::new(), &HashMap::new());
        assert_eq!(
            decisions,
            [
                Decision::Insert { version: 1 },
                Decision::Done(Ok(StoredAt {
                    version: 1,
                    duplicate: true
                }))
            ]
        );
    }
}
