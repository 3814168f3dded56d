//! Databases and their migrations, on PostgreSQL and CockroachDB alike.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use pipeline_runtime::db;
use secrecy::ExposeSecret as _;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migrate as _, Migration, MigrationSource, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};

use crate::Outcome;
use crate::config::Config;
use crate::roles::{self, Access, Role};

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

    /// The context's name, as the report shows it.
    pub fn name(self) -> &'static str {
        match self {
            Context::EventStore => "eventstore",
            Context::Orders => "orders",
            Context::Payments => "payments",
        }
    }

    /// The migrations of the context, as the crate that owns its schema exports them.
    pub fn migrations(self) -> &'static Migrator {
        match self {
            Context::EventStore => &eventstore::MIGRATOR,
            Context::Orders => &order_readmodel::MIGRATOR,
            Context::Payments => &paymentworker::MIGRATOR,
        }
    }

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

/// The database the administrator connects to while a context's database may not exist yet:
/// PostgreSQL and CockroachDB both have it.
const MAINTENANCE_DATABASE: &str = "postgres";

/// The user the administrator connects as when `BOOTSTRAP_DATABASE_URL` is not given: the
/// superuser of the test kit's and the dev stack's PostgreSQL, and CockroachDB's built-in admin.
pub const DEFAULT_ADMIN_USER: &str = "root";

/// One context's database as the bootstrapper reaches it: as the administrator to create it and
/// hand it to the context's role, then with the context's own URL to migrate it.
#[derive(Clone)]
pub struct Target {
    pub context: Context,
    /// The variable that gave the URL, for messages.
    pub variable: &'static str,
    /// The database named in the URL.
    pub database: String,
    /// The context's role, or `None` when the URL's user is the administrator (nothing to create).
    pub role: Option<Role>,
    url: String,
    admin_url: String,
    admin_given: bool,
}

// Both URLs may hold a password.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("context", &self.context)
            .field("url", &db::redact(&self.url))
            .field("admin_url", &db::redact(&self.admin_url))
            .field("role", &self.role)
            .finish()
    }
}

impl Target {
    /// `context`'s database at `url` (from `variable`), administered as `admin_url`, or, when that is
    /// `None`, as [`DEFAULT_ADMIN_USER`] without a password on the same server ([`default_admin_url`]).
    pub fn new(
        context: Context,
        variable: &'static str,
        url: &str,
        admin_url: Option<&str>,
    ) -> anyhow::Result<Target> {
        let database = database_name(url).with_context(|| format!("{variable} is invalid"))?;
        let (admin_url, admin_given) = match admin_url.filter(|url| !url.trim().is_empty()) {
            Some(given) => {
                db::connect_options(given).context("BOOTSTRAP_DATABASE_URL is invalid")?;
                (given.to_owned(), true)
            }
            None => (
                default_admin_url(url).with_context(|| format!("{variable} is invalid"))?,
                false,
            ),
        };
        let user = db::connect_options(url)
            .with_context(|| format!("{variable} is invalid"))?
            .get_username()
            .to_owned();
        let admin_user = db::connect_options(&admin_url)?.get_username().to_owned();
        let role = if user == admin_user {
            None
        } else {
            Some(Role::from_url(url).with_context(|| format!("{variable} is invalid"))?)
        };
        Ok(Target {
            context,
            variable,
            database,
            role,
            url: url.to_owned(),
            admin_url,
            admin_given,
        })
    }

    /// The context's URL, as its services and its migrations connect.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The administrator, connected to the maintenance database (the admin URL's own database when
    /// given, else `postgres`). Statement logging is off: `CREATE ROLE` carries a password.
    fn admin_options(&self) -> anyhow::Result<PgConnectOptions> {
        let options = db::connect_options(&self.admin_url)?.disable_statement_logging();
        Ok(match (self.admin_given, options.get_database()) {
            (true, Some(_)) => options,
            _ => options.database(MAINTENANCE_DATABASE),
        })
    }

    /// The context's URL, and the administrator's when it was given, without passwords.
    fn shown(&self) -> String {
        if self.admin_given {
            format!(
                "{} (as {})",
                db::redact(&self.url),
                db::redact(&self.admin_url)
            )
        } else {
            db::redact(&self.url)
        }
    }

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

/// The administrator's URL when `BOOTSTRAP_DATABASE_URL` is not given: `url`'s server and
/// parameters as [`DEFAULT_ADMIN_USER`], without a password, on the `postgres` database.
pub fn default_admin_url(url: &str) -> anyhow::Result<String> {
    let mut admin = url::Url::parse(url)
        .with_context(|| format!("invalid database URL {}", db::redact(url)))?;
    let derived = admin
        .set_username(DEFAULT_ADMIN_USER)
        .and_then(|()| admin.set_password(None));
    anyhow::ensure!(
        derived.is_ok(),
        "{} names no server to administer",
        db::redact(url)
    );
    admin.set_path(&format!("/{MAINTENANCE_DATABASE}"));
    Ok(admin.to_string())
}

/// The three contexts of `config`, each with its administrator.
pub fn targets(config: &Config) -> anyhow::Result<Vec<Target>> {
    let admin = config
        .admin_database_url
        .as_ref()
        .map(|url| url.expose_secret());
    [
        (
            Context::EventStore,
            "EVENTSTORE_DATABASE_URL",
            config.eventstore_database_url.expose_secret(),
        ),
        (
            Context::Orders,
            "ORDERS_DATABASE_URL",
            config.orders_database_url.expose_secret(),
        ),
        (
            Context::Payments,
            "PAYMENTS_DATABASE_URL",
            config.payments_database_url.expose_secret(),
        ),
    ]
    .into_iter()
    .map(|(context, variable, url)| Target::new(context, variable, url, admin))
    .collect()
}

/// A role that may only read the orders database.
#[derive(Debug, Clone)]
pub struct Reader {
    pub role: Role,
    /// The variable that named it, for messages.
    pub variable: &'static str,
    /// The tables it may read; `None`: every table of the `public` schema.
    pub tables: Option<&'static [&'static str]>,
}

/// What deadlinewatcher reads: the orders themselves, not their items.
pub const WATCHER_TABLES: &[&str] = &["orders"];

/// The read-only roles of the orders database: ordersvc's (`ORDERS_READER_DATABASE_URL`, every
/// table) and deadlinewatcher's (`ORDERS_WATCHER_DATABASE_URL`, `orders` only), those that are given.
/// Each must be a user of its own on the orders database.
pub fn orders_readers(config: &Config, targets: &[Target]) -> anyhow::Result<Vec<Reader>> {
    let mut readers: Vec<Reader> = Vec::new();
    for (variable, url, tables) in [
        (
            "ORDERS_READER_DATABASE_URL",
            config
                .orders_reader_database_url
                .as_ref()
                .map(|url| url.expose_secret()),
            None,
        ),
        (
            "ORDERS_WATCHER_DATABASE_URL",
            config
                .orders_watcher_database_url
                .as_ref()
                .map(|url| url.expose_secret()),
            Some(WATCHER_TABLES),
        ),
    ] {
        let Some(url) = url.filter(|url| !url.trim().is_empty()) else {
            continue;
        };
        let role = orders_reader(variable, url, targets)?;
        for other in &readers {
            anyhow::ensure!(
                other.role.name != role.name,
                "{variable} must name a user of its own: {} is the user of {}",
                role.name,
                other.variable
            );
        }
        readers.push(Reader {
            role,
            variable,
            tables,
        });
    }
    Ok(readers)
}

/// The read-only role of `url` (from `variable`): a user of its own on the orders database.
fn orders_reader(variable: &'static str, url: &str, targets: &[Target]) -> anyhow::Result<Role> {
    let database = database_name(url).with_context(|| format!("{variable} is invalid"))?;
    let reader = Role::from_url(url).with_context(|| format!("{variable} is invalid"))?;
    for target in targets {
        if target.context == Context::Orders {
            anyhow::ensure!(
                database == target.database,
                "{variable} names database {database}, not {}, the one of ORDERS_DATABASE_URL",
                target.database
            );
        }
        let user = match &target.role {
            Some(role) => role.name.clone(),
            None => db::connect_options(&target.admin_url)?
                .get_username()
                .to_owned(),
        };
        anyhow::ensure!(
            reader.name != user,
            "{variable} must name a user of its own: {user} is the user of {}{}",
            target.variable,
            if target.role.is_none() {
                " and the administrator"
            } else {
                ""
            }
        );
    }
    Ok(reader)
}

/// Checks the SQL settings of `config` without contacting anything.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let targets = targets(config)?;
    orders_readers(config, &targets)?;
    Ok(())
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
