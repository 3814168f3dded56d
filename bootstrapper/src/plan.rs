//! What the bootstrapper will do, decided from the configuration alone before anything is
//! contacted: each context's database and role, the readers of ordersdb, and the checks that they
//! fit together. [`crate::sql`] does the work.

use std::fmt;

use anyhow::Context as _;
use pipeline_runtime::db;
use secrecy::ExposeSecret as _;
use sqlx::ConnectOptions as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;

use crate::config::Config;
use crate::roles::Role;

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
pub(crate) const MAINTENANCE_DATABASE: &str = "postgres";

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
    pub(crate) fn admin_options(&self) -> anyhow::Result<PgConnectOptions> {
        let options = db::connect_options(&self.admin_url)?.disable_statement_logging();
        Ok(match (self.admin_given, options.get_database()) {
            (true, Some(_)) => options,
            _ => options.database(MAINTENANCE_DATABASE),
        })
    }

    /// The context's URL, and the administrator's when it was given, without passwords.
    pub(crate) fn shown(&self) -> String {
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

// The configuration's own check lives with the plan it feeds, so that the configuration depends
// on nothing of the bootstrapper's.
impl Config {
    /// Checks every value before anything is contacted; the error names the variable at fault and
    /// never shows a password.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (variable, url) in [
            ("EVENTSTORE_DATABASE_URL", &self.eventstore_database_url),
            ("ORDERS_DATABASE_URL", &self.orders_database_url),
            ("PAYMENTS_DATABASE_URL", &self.payments_database_url),
        ] {
            database_name(url.expose_secret()).with_context(|| format!("{variable} is invalid"))?;
        }
        // Administrator, roles and reader: names, passwords and databases that fit together.
        check(self)?;
        self.nats.validate()?;
        anyhow::ensure!(
            (1..=5).contains(&self.replicas),
            "NATS_STREAM_REPLICAS must be between 1 and 5, not {}",
            self.replicas
        );
        Ok(())
    }
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
}
