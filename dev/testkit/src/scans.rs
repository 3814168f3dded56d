//! How a service's statements read a table, from PostgreSQL's table counters: for tests that a
//! plan cached while a table looked empty still reads it by index once it has grown.
//!
//! A backend reports its counters at the end of a transaction at most once a second, within about
//! a second of going idle, and when its connection closes; the helpers wait accordingly.

use std::time::Duration;

use sqlx::PgPool;

/// How long an idle backend may keep its counters to itself.
const REPORT_DELAY: Duration = Duration::from_millis(1500);

/// Makes the statistics of `tables` say they are empty, for the rest of the test: autovacuum off,
/// then `ANALYZE` while they are.
pub async fn statistics_say_empty(pool: &PgPool, tables: &[&str]) {
    for table in tables {
        for statement in [
            format!("ALTER TABLE {table} SET (autovacuum_enabled = false)"),
            format!("ANALYZE {table}"),
        ] {
            sqlx::query(&statement)
                .execute(pool)
                .await
                .unwrap_or_else(|err| panic!("{statement}: {err}"));
        }
    }
}

/// Starts counting `table`'s scans from zero, once what was done before has been reported.
pub async fn count_from_now(pool: &PgPool, table: &str) {
    tokio::time::sleep(REPORT_DELAY).await;
    sqlx::query("SELECT pg_stat_reset_single_table_counters($1::regclass)")
        .bind(table)
        .execute(pool)
        .await
        .expect("table counters reset");
}

/// `table`'s sequential and index scans since [`count_from_now`], once at least `expected` scans
/// in all have been reported (or after 30 s). Stop the service first: its connections report as
/// they close.
pub async fn counted(pool: &PgPool, table: &str, expected: i64) -> Scans {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (sequential, index): (i64, i64) = sqlx::query_as(
            "SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("table counters");
        if sequential + index >= expected || tokio::time::Instant::now() > deadline {
            return Scans { sequential, index };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scans of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scans {
    /// Reads of the whole table.
    pub sequential: i64,
    pub index: i64,
}
