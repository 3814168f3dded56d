//! Databases and their migrations, on PostgreSQL and CockroachDB alike.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use pipeline_runtime::db;
use sqlx::migrate::{Migrate as _, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection as _, PgPool};

use crate::Outcome;

/// How long [`ensure_database`] waits for the server to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLSTATE `duplicate_database`: someone else created it between our check and our `CREATE`.
const DUPLICATE_DATABASE: &str = "42P04";
/// SQLSTATE `invalid_catalog_name`: the database we connected to does not exist.
const INVALID_CATALOG_NAME: &str = "3D000";

/// A bounded context that owns a database and its migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// The event store: events and outbox (`EVENTSTORE_DATABASE_URL`).
    EventStore,
    /// The read model (`ORDERS_DATABASE_URL`).
    Orders,
    /// paymentworker's wallets and payments (`PAYMENTS_DATABASE_URL`).
    Payments,
}

impl Context {
    /// Every context, in the order the bootstrapper migrates them.
    pub const ALL: [Context; 3] = [Context::EventStore, Context::Orders, Context::Payments];

    /// The context's name, also its folder under `migrations/`.
    pub fn name(self) -> &'static str {
        match self {
            Context::EventStore => "eventstore",
            Context::Orders => "orders",
            Context::Payments => "payments",
        }
    }

    /// The migrations of the context, embedded in the binary.
    pub fn migrator(self) -> Migrator {
        let mut migrator = match self {
            Context::EventStore => sqlx::migrate!("migrations/eventstore"),
            Context::Orders => sqlx::migrate!("migrations/orders"),
            Context::Payments => sqlx::migrate!("migrations/payments"),
        };
        // CockroachDB has no advisory locks (`pg_advisory_lock`), which sqlx takes by default to keep
        // two migrators apart. Without them, a second bootstrapper running at the same moment fails on
        // the primary key of `_sqlx_migrations` (each migration commits in one transaction with its row)
        // and succeeds when run again.
        migrator.set_locking(false);
        migrator
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The database named in `url`, checked to be a plain identifier so it can be quoted safely.
pub fn database_name(url: &str) -> anyhow::Result<String> {
    let options = db::connect_options(url)?;
    let name = options
        .get_database()
        .with_context(|| format!("{} names no database", db::redact(url)))?;
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name {name:?} in {} may only contain ASCII letters, digits and '_'",
        db::redact(url)
    );
    Ok(name.to_owned())
}

/// Creates the database named in `url` unless it exists, connecting to the same server's `postgres`
/// database with the same user and parameters.
pub async fn ensure_database(url: &str) -> anyhow::Result<Outcome> {
    ensure_database_within(url, CONNECT_TIMEOUT).await
}

/// [`ensure_database`] with another connect timeout.
#[tracing::instrument(skip_all, fields(db.url = %db::redact(url)))]
pub async fn ensure_database_within(url: &str, timeout: Duration) -> anyhow::Result<Outcome> {
    let name = database_name(url)?;
    let target = db::connect_options(url)?;
    // PostgreSQL and CockroachDB both have a `postgres` database to connect to while ours is missing.
    let admin = target.clone().database("postgres");
    let mut conn = match connect(&admin, timeout).await {
        Ok(conn) => conn,
        Err(err) if db::sqlstate(&err).as_deref() == Some(INVALID_CATALOG_NAME) => {
            // A server without `postgres`: if ours already exists there is nothing to do.
            return match connect(&target, timeout).await {
                Ok(conn) => {
                    close(conn).await;
                    Ok(Outcome::Unchanged)
                }
                Err(err) => Err(unreachable(url, err)),
            };
        }
        Err(err) => return Err(unreachable(url, err)),
    };
    let outcome = create_if_missing(&mut conn, &name).await;
    close(conn).await;
    outcome.with_context(|| format!("cannot create database {name} at {}", db::redact(url)))
}

async fn create_if_missing(conn: &mut PgConnection, name: &str) -> Result<Outcome, sqlx::Error> {
    // PostgreSQL has no `CREATE DATABASE IF NOT EXISTS`; CockroachDB also answers from pg_database.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(Outcome::Unchanged);
    }
    // `name` is checked by `database_name` to be `[A-Za-z0-9_]+`, so quoting it is enough.
    let statement = format!(r#"CREATE DATABASE "{name}""#);
    match sqlx::raw_sql(&statement).execute(&mut *conn).await {
        Ok(_) => Ok(Outcome::Created),
        Err(err) if db::sqlstate(&err).as_deref() == Some(DUPLICATE_DATABASE) => {
            Ok(Outcome::Unchanged)
        }
        Err(err) => Err(err),
    }
}

async fn connect(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ))),
    }
}

async fn close(conn: PgConnection) {
    if let Err(err) = conn.close().await {
        tracing::debug!(error = %err, "closing the admin connection failed");
    }
}

fn unreachable(url: &str, err: sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach the database server of {}: {err}",
        db::redact(url)
    )
}

/// Applies the context's migrations that `pool`'s database has not seen yet.
///
/// [`Outcome::Migrated`] tells how many were applied, [`Outcome::Unchanged`] that none were due. A
/// migration that was changed after it was applied is an error, never re-run.
#[tracing::instrument(skip_all, fields(context = %context))]
pub async fn migrate(context: Context, pool: &PgPool) -> anyhow::Result<Outcome> {
    let migrator = context.migrator();
    let mut conn = pool
        .acquire()
        .await
        .with_context(|| format!("cannot reach the {context} database"))?;
    conn.ensure_migrations_table()
        .await
        .with_context(|| format!("cannot create _sqlx_migrations in the {context} database"))?;
    let applied: HashSet<i64> = conn
        .list_applied_migrations()
        .await
        .with_context(|| format!("cannot list the migrations of the {context} database"))?
        .into_iter()
        .map(|migration| migration.version)
        .collect();
    let pending = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .count();
    migrator
        .run(&mut *conn)
        .await
        .with_context(|| format!("cannot migrate the {context} database"))?;
    Ok(if pending == 0 {
        Outcome::Unchanged
    } else {
        Outcome::Migrated(pending)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_comes_from_the_url() {
        let name = database_name("postgresql://root@127.0.0.1:26257/ordersdb?sslmode=disable");
        assert_eq!(name.expect("valid").as_str(), "ordersdb");
    }

    #[test]
    fn names_that_would_need_escaping_are_refused() {
        for url in [
            "postgresql://root@h/orders%22db",
            "postgresql://root@h/orders-db",
            "postgresql://root@h/orders%20db",
        ] {
            assert!(database_name(url).is_err(), "{url}");
        }
    }

    #[test]
    fn every_context_embeds_its_migrations() {
        for context in Context::ALL {
            assert!(context.migrator().iter().count() >= 1, "{context}");
        }
    }
}
