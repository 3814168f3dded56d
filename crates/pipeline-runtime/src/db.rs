//! SQL plumbing shared by every context: pools, serialization-failure retries, error classes.
//!
//! Every connection of [`lazy_pool`] runs with `plan_cache_mode = force_custom_plan`
//! ([`CUSTOM_PLANS`]): a prepared statement is parsed once per connection and then sent in one
//! round trip (bind, execute), yet planned for its parameters at each call. PostgreSQL's default
//! (`auto`) makes a cached generic plan after five calls, and on a fresh database that is while the
//! tables are empty: a sequential scan of a batch statement (`= ANY($1)`, `UNNEST($1::…[])`), kept
//! by the long-lived connection while the table grows (measured: 27 million rows read by 3,354
//! scans of `orders` in 30 s of load, and 5 ms of CPU per order instead of 1). The statements used
//! to avoid that with `.persistent(false)`, which costs a second round trip (parse and describe,
//! then bind and execute) on every call. Planning costs little next to a batch of 256 rows, but
//! batches are small at a moderate rate, and there planning costs as much as execution: the hot
//! statements that read only by key run on a [`keyed_pool`], planned once per connection with
//! full reads forbidden where an index can answer.
//!
//! Both engines the project runs on (CockroachDB in production, PostgreSQL at SERIALIZABLE in tests)
//! abort a transaction that would break serializability with SQLSTATE 40001 and expect the client to
//! run it again. [`retry`] does that, bounded and jittered; every transaction goes through it.
//!
//! A failover (or any network fault) breaks connections in the middle of their work: sqlx 0.8
//! reports a socket closed or reset under a query, or under its `COMMIT`, as `sqlx::Error::Io`
//! (`UnexpectedEof` "expected to read 5 bytes, got 0 bytes at EOF", `ConnectionReset`), never as
//! `Protocol`; a node shutting down answers SQLSTATE 57P01/57P02; a deposed leader that is now a
//! replica refuses writes with 25006. [`is_unavailable`] calls all of these an outage. After an
//! outage at `COMMIT` the outcome is unknown: the caller retries, and every write is idempotent
//! (event ids, payment ids, version checks), so a commit that did happen is found, not repeated.
//!
//! sqlx closes a connection whose socket broke by itself (its check on release fails), but not one
//! to a server that is alive and now read-only. [`retry`] therefore notes every such fault
//! ([`note_connection_fault`]) and the pools of [`lazy_pool`] refuse any idle connection opened
//! before the last one: after a failover, every connection is opened again, through the proxy, to
//! the new leader. That costs a clock reading per checkout, no round trip.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgPool};

use crate::backoff::{Backoff, Jitter};

/// SQLSTATE of a serialization failure: run the transaction again.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a unique violation.
pub const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of a write refused by a read-only node: a deposed leader, a replica.
pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
/// SQLSTATE `feature_not_supported`, which a replica answers to a SERIALIZABLE transaction
/// ("cannot use serializable mode in a hot standby"): a deposed leader reached before the proxy
/// in front of it noticed. Only that message makes it a connection fault; the code alone is not.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
const HOT_STANDBY: &str = "hot standby";
/// SQLSTATE CockroachDB gives when a node failed while the statement ran and its outcome is
/// unknown ("result is ambiguous").
pub const STATEMENT_COMPLETION_UNKNOWN: &str = "40003";

/// How many times a transaction is attempted before its serialization failure is returned.
pub const MAX_ATTEMPTS: u32 = 10;

/// Opens a pool that connects lazily and gives up on a connection after `acquire_timeout`, so a
/// database that is down turns into an error quickly and the pool recovers when it returns. Its
/// connections plan every call of a statement for its parameters ([`CUSTOM_PLANS`]).
pub fn lazy_pool(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    pool(url, max_connections, acquire_timeout, &[CUSTOM_PLANS])
}

/// A [`lazy_pool`] for statements that find every row they read by a key: its connections plan
/// each statement once ([`KEYED_PLANS`]). A batch statement planned for its parameters spends as
/// long in the planner as in the executor when its batches are small (measured at 100 orders/s:
/// 3.0 s of planning beside 3.1 s of execution in 20 s); a generic plan is made once per
/// connection, and again after its tables are analyzed. The trap `lazy_pool` avoids by planning
/// every call, a generic plan made while a table is empty that reads it in full, is closed by
/// forbidding full reads wherever an index can answer: on an analyzed empty table the generic plan
/// of an `= ANY($1)` statement is a sequential scan, kept while the table grows. Only for pools
/// whose every statement has an index to read by.
pub fn keyed_pool(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    pool(url, max_connections, acquire_timeout, &KEYED_PLANS)
}

fn pool(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
    settings: &'static [&'static str],
) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        // No ping before every checkout: it is a round trip per transaction. A connection the
        // server dropped fails its first statement instead, and that failure is an outage the
        // caller already retries (an HTTP 503, a `nak`, a batch planned again).
        .test_before_acquire(false)
        // A connection older than the last connection fault may lead to a node that is no longer
        // the leader; a new one goes where the database now is.
        .before_acquire(|_conn, meta| Box::pin(async move { Ok(!opened_before_fault(meta.age)) }))
        .after_connect(move |conn, _meta| Box::pin(plan_settings(conn, settings)))
        .connect_lazy_with(options))
}

/// The session setting that keeps prepared statements planned for their parameters.
pub const CUSTOM_PLANS: &str = "SET plan_cache_mode = force_custom_plan";

/// The session settings of a [`keyed_pool`]: one generic plan per statement and connection, which
/// reads a table in full only where no index can answer.
pub const KEYED_PLANS: [&str; 2] = [
    "SET plan_cache_mode = force_generic_plan",
    "SET enable_seqscan = off",
];

/// SQLSTATE of an unknown configuration parameter.
const UNDEFINED_OBJECT: &str = "42704";

/// Applies a pool's planner settings to a new connection. A setting the server does not know
/// (PostgreSQL has `plan_cache_mode` since 12; CockroachDB has it only in recent versions, and no
/// `enable_seqscan`) is skipped rather than refused: that costs at most the plan it avoids, where
/// refusing would cost the service. Not run against CockroachDB here.
async fn plan_settings(
    conn: &mut sqlx::PgConnection,
    settings: &[&str],
) -> Result<(), sqlx::Error> {
    use sqlx::Executor as _;
    for setting in settings {
        match conn.execute(*setting).await {
            Err(err) if sqlstate(&err).as_deref() == Some(UNDEFINED_OBJECT) => {
                tracing::debug!(error = %err, setting, "the database does not know this setting");
            }
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// Parses a `postgresql://` URL; the error names the variable's value without its password.
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("invalid database URL {}", redact(url)))?;
    // Statement logging at INFO would print every query; keep it for debugging only.
    Ok(options.log_statements(log::LevelFilter::Debug))
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// The SQLSTATE of a database error, if the error came from the database.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// True for errors that say "run the transaction again": serialization failures.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    sqlstate(err).as_deref() == Some(SERIALIZATION_FAILURE)
}

/// True for errors that mean the database cannot be reached, is restarting or failing over: the
/// caller should answer "unavailable" and try later, not report a bug.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 53: insufficient resources; 40001 after all retries is also "try again later";
            // 40003: CockroachDB lost a node under the statement, the outcome is unknown.
            is_connection_fault(err)
                || code.starts_with("53")
                || code == SERIALIZATION_FAILURE
                || code == STATEMENT_COMPLETION_UNKNOWN
        }),
        _ => is_connection_fault(err),
    }
}

/// True for errors that say the connection itself is no good: its socket broke, its server is
/// shutting down, or its server no longer takes writes. Such a connection must not be used again.
pub fn is_connection_fault(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P0x: admin/crash shutdown, cannot connect now;
            // 25006: a read-only node (a deposed leader that is a replica now).
            code.starts_with("08")
                || code.starts_with("57P")
                || code == READ_ONLY_SQL_TRANSACTION
                || (code == FEATURE_NOT_SUPPORTED && db.message().contains(HOT_STANDBY))
        }),
        _ => false,
    }
}

/// When the last connection fault was seen, in nanoseconds since [`epoch`]; 0: never.
static LAST_FAULT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    // Never 0, which means "no fault"; u64 nanoseconds last 584 years.
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Records `err` if it is a [`connection fault`](is_connection_fault): from now on, the pools of
/// [`lazy_pool`] open new connections instead of handing out those opened before. Process-wide,
/// not per pool: a fault of one pool's server makes another's reconnect once, which costs a
/// connection set-up, while a missed fault costs a stream of errors.
pub fn note_connection_fault(err: &sqlx::Error) {
    if is_connection_fault(err) {
        LAST_FAULT.fetch_max(nanos_since_epoch(Instant::now()), Ordering::Relaxed);
    }
}

/// Whether a connection of this `age` was opened before the last connection fault.
fn opened_before_fault(age: Duration) -> bool {
    let fault = LAST_FAULT.load(Ordering::Relaxed);
    if fault == 0 {
        return false;
    }
    let opened = Instant::now().checked_sub(age).unwrap_or_else(epoch);
    nanos_since_epoch(opened) <= fault
}

/// Starts a transaction at READ COMMITTED, for a transaction whose races are caught by guards of
/// its own: row locks taken in a fixed order (`FOR UPDATE … ORDER BY` the key), unique keys with
/// `ON CONFLICT DO NOTHING` and a check of the rows it changed, version predicates in `WHERE`. Each
/// caller names its guards where it calls this.
///
/// On PostgreSQL this skips the serialization failures (and their retries) that SERIALIZABLE
/// raises when concurrent batches merely touch the same index pages. CockroachDB runs such a
/// transaction at SERIALIZABLE unless its cluster enables READ COMMITTED; both are correct here,
/// and the caller still runs it through [`retry`] for SQLSTATE 40001.
pub async fn begin_guarded(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await
}

/// Runs `attempt` until it succeeds, fails with an error that is not a serialization failure, or has
/// failed [`MAX_ATTEMPTS`] times. Sleeps a jittered, growing delay between attempts.
///
/// `attempt` must run a whole transaction (begin to commit) and be safe to run again: the commit of a
/// failed attempt never happened. A connection fault is not retried here (the database may be gone
/// for seconds); it is noted, so the pool drops the connections it may have broken, and returned.
pub async fn retry<T, F, Fut>(mut attempt: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let outcome = attempt().await;
        if let Err(err) = &outcome {
            note_connection_fault(err);
        }
        match outcome {
            Err(err) if is_retryable(&err) && tries < MAX_ATTEMPTS => {
                let delay = backoff(tries);
                tracing::debug!(
                    attempt = tries,
                    ?delay,
                    "serialization failure, retrying transaction"
                );
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

/// Between attempts of a transaction: 2 ms, 4 ms, 8 ms ... capped at 500 ms, with full jitter so
/// that transactions that collided once do not collide again.
pub const TRANSACTION_BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(2),
    Duration::from_millis(500),
    Jitter::Full,
);

/// The delay before retry `attempt` of a transaction ([`TRANSACTION_BACKOFF`]).
pub fn backoff(attempt: u32) -> Duration {
    TRANSACTION_BACKOFF.delay(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_cap() {
        for attempt in 1..20 {
            assert!(backoff(attempt) <= Duration::from_millis(500));
            assert!(backoff(attempt) >= Duration::from_millis(1));
        }
    }

    #[test]
    fn a_password_never_reaches_a_message() {
        let shown = redact("postgresql://app:secret@db:26257/ordersdb");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn an_unreachable_pool_is_unavailable() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_retryable(&sqlx::Error::PoolTimedOut));
        // A pool that times out says nothing about the connections it holds.
        assert!(!is_connection_fault(&sqlx::Error::PoolTimedOut));
    }

    /// A database error with only a SQLSTATE, as the server sends it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            match self.0 {
                FEATURE_NOT_SUPPORTED => "cannot use serializable mode in a hot standby",
                code => code,
            }
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn database(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Sqlstate(code)))
    }

    #[test]
    fn what_a_failover_answers_is_an_outage_of_the_connection() {
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "expected to read 5 bytes, got 0 bytes at EOF",
        );
        let failover = [
            sqlx::Error::Io(eof),
            sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
            sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()),
            database("57P01"),
            database("57P02"),
            database("57P03"),
            database("08006"),
            database(READ_ONLY_SQL_TRANSACTION),
            // A SERIALIZABLE transaction on a node that just became a replica.
            database(FEATURE_NOT_SUPPORTED),
        ];
        for err in &failover {
            assert!(is_unavailable(err), "{err:?}");
            assert!(is_connection_fault(err), "{err:?}");
            assert!(!is_retryable(err), "{err:?}");
        }
    }

    #[test]
    fn an_outage_of_the_database_leaves_its_connections_alone() {
        for code in [SERIALIZATION_FAILURE, STATEMENT_COMPLETION_UNKNOWN, "53300"] {
            let err = database(code);
            assert!(is_unavailable(&err), "{code}");
            assert!(!is_connection_fault(&err), "{code}");
        }
    }

    #[test]
    fn a_bug_or_a_refused_statement_is_not_an_outage() {
        let others = [
            database(UNIQUE_VIOLATION),
            database("42P01"),
            database("57014"),
            sqlx::Error::RowNotFound,
            sqlx::Error::Protocol("unexpected message".into()),
            sqlx::Error::Decode("bad column".into()),
        ];
        for err in &others {
            assert!(!is_unavailable(err), "{err:?}");
            assert!(!is_connection_fault(err), "{err:?}");
        }
    }

    #[test]
    fn a_connection_fault_retires_the_connections_opened_before_it() {
        // Opened a minute ago, the fault is now: retired.
        note_connection_fault(&database("57P01"));
        assert!(opened_before_fault(Duration::from_secs(60)));
        // Opened after the fault: kept.
        let fault = LAST_FAULT.load(Ordering::Relaxed);
        while nanos_since_epoch(Instant::now()) <= fault {
            std::hint::spin_loop();
        }
        assert!(!opened_before_fault(Duration::ZERO));
        // Not a connection fault: nothing recorded, the fresh connection stays.
        note_connection_fault(&database(SERIALIZATION_FAILURE));
        assert!(!opened_before_fault(Duration::ZERO));
    }
}
