//! Databases and their migrations, on PostgreSQL and CockroachDB alike.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use pipeline_runtime::db;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migrate as _, Migration, MigrationSource, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection as _, PgPool};

use crate::Outcome;
use crate::plan::{Context, MAINTENANCE_DATABASE, Reader, Target, database_name};
use crate::roles::{self, Access, Role};

/// How long [`ensure_database`] waits for the server to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLSTATE `duplicate_database`: someone else created it between our check and our `CREATE`.
const DUPLICATE_DATABASE: &str = "42P04";
/// SQLSTATE `invalid_catalog_name`: the database we connected to does not exist.
const INVALID_CATALOG_NAME: &str = "3D000";

impl Context {
    /// [`Context::migrations`] as the bootstrapper runs them: without locking.
    pub async fn migrator(self) -> anyhow::Result<Migrator> {
        let mut migrator = Migrator::new(Embedded(self.migrations()))
            .await
            .map_err(|err| anyhow::anyhow!("the {self} migrations: {err}"))?;
        // CockroachDB has no advisory locks (`pg_advisory_lock`), which sqlx takes by default to keep
        // two migrators apart. Without them, a second bootstrapper running at the same moment fails on
        // the primary key of `_sqlx_migrations` (each migration commits in one transaction with its row)
        // and succeeds when run again.
        migrator.set_locking(false);
        Ok(migrator)
    }
}

/// The migrations an owner embedded, as a source for a [`Migrator`] with settings of our own.
#[derive(Debug)]
struct Embedded(&'static Migrator);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { Ok(self.0.iter().cloned().collect()) })
    }
}

impl Target {
    fn unreachable(&self, err: sqlx::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach the database server of {}: {err}",
            self.shown()
        )
    }

    /// The administrator's connection to the maintenance database, or to the context's own when
    /// the server has no maintenance database (it must exist by then).
    async fn admin_connection(&self, timeout: Duration) -> anyhow::Result<PgConnection> {
        let admin = self.admin_options()?;
        match connect(&admin, timeout).await {
            Ok(conn) => Ok(conn),
            Err(err) if db::sqlstate(&err).as_deref() == Some(INVALID_CATALOG_NAME) => {
                connect(&admin.database(&self.database), timeout)
                    .await
                    .map_err(|err| self.unreachable(err))
            }
            Err(err) => Err(self.unreachable(err)),
        }
    }

    /// The administrator's connection to the context's database.
    async fn admin_connection_to_database(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<PgConnection> {
        let admin = self.admin_options()?.database(&self.database);
        connect(&admin, timeout)
            .await
            .map_err(|err| self.unreachable(err))
    }
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
    let admin = target.clone().database(MAINTENANCE_DATABASE);
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

/// Creates the target's database unless it exists, as its administrator.
#[tracing::instrument(skip_all, fields(db.name = %target.database))]
pub async fn ensure_target_database(target: &Target, timeout: Duration) -> anyhow::Result<Outcome> {
    let admin = target.admin_options()?;
    let mut conn = match connect(&admin, timeout).await {
        Ok(conn) => conn,
        Err(err) if db::sqlstate(&err).as_deref() == Some(INVALID_CATALOG_NAME) => {
            // A server without a maintenance database: if ours already exists there is nothing to do.
            return match connect(&admin.database(&target.database), timeout).await {
                Ok(conn) => {
                    close(conn).await;
                    Ok(Outcome::Unchanged)
                }
                Err(err) => Err(target.unreachable(err)),
            };
        }
        Err(err) => return Err(target.unreachable(err)),
    };
    let outcome = create_if_missing(&mut conn, &target.database).await;
    close(conn).await;
    outcome.with_context(|| {
        format!(
            "cannot create database {} at {}",
            target.database,
            target.shown()
        )
    })
}

/// Creates `role` unless it exists, as `target`'s administrator (roles belong to the whole server).
#[tracing::instrument(skip_all, fields(db.role = %role.name))]
pub async fn ensure_role(
    target: &Target,
    role: &Role,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let mut conn = target.admin_connection(timeout).await?;
    let outcome = roles::ensure_role(&mut conn, role).await;
    close(conn).await;
    outcome.with_context(|| format!("cannot create role {} at {}", role.name, target.shown()))
}

/// Hands `target`'s database to its role and closes it to everyone else but `readers`.
#[tracing::instrument(skip_all, fields(db.name = %target.database))]
pub async fn ensure_access(
    target: &Target,
    readers: &[&str],
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let mut conn = target.admin_connection_to_database(timeout).await?;
    let access = Access {
        database: &target.database,
        owner: target.role.as_ref().map(|role| role.name.as_str()),
        readers,
    };
    let outcome = roles::ensure_access(&mut conn, access).await;
    close(conn).await;
    outcome.with_context(|| {
        format!(
            "cannot set who may use database {} at {}",
            target.database,
            target.shown()
        )
    })
}

/// Lets `reader` read `target`'s tables (those it may).
#[tracing::instrument(skip_all, fields(db.name = %target.database, db.role = %reader.role.name))]
pub async fn ensure_reads(
    target: &Target,
    reader: &Reader,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let mut conn = target.admin_connection_to_database(timeout).await?;
    let outcome = roles::ensure_reads(&mut conn, &reader.role.name, reader.tables).await;
    close(conn).await;
    outcome.with_context(|| {
        format!(
            "cannot let {} read database {} at {}",
            reader.role.name,
            target.database,
            target.shown()
        )
    })
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
    let migrator = context.migrator().await?;
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

    #[tokio::test]
    async fn every_context_runs_its_owners_migrations_without_locking() {
        for context in Context::ALL {
            let migrator = context.migrator().await.expect("resolved");
            assert!(migrator.iter().count() >= 1, "{context}");
            assert_eq!(
                migrator.iter().count(),
                context.migrations().iter().count(),
                "{context}"
            );
            assert!(!migrator.locking, "{context}");
        }
    }
}
