//! A database role per bounded context: created by the administrator, owner of its database and
//! tables, refused on the other contexts' databases; and a read-only role for ordersvc.
//!
//! The test kit's PostgreSQL trusts every local connection, so passwords are stored but never
//! checked here: what keeps a role out of another database is the grants.

use bootstrapper::{Config, Context, Outcome};
use sqlx::{Connection as _, PgConnection};

use crate::{Servers, migrations};

/// The databases and the role each context connects as.
const CONTEXTS: [(&str, &str); 3] = [
    ("eventstoredb", "eventstore"),
    ("ordersdb", "orders"),
    ("paymentsdb", "payments"),
];

/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// `user[:password]@` the test's PostgreSQL, on `database`.
fn url(servers: &Servers, user: &str, password: Option<&str>, database: &str) -> String {
    let login = match password {
        Some(password) => format!("{user}:{password}"),
        None => user.to_owned(),
    };
    format!(
        "postgresql://{login}@127.0.0.1:{}/{database}?sslmode=disable",
        servers.postgres().port()
    )
}

/// SQL only, each context as its own role (payments with a password), `root` as administrator.
fn role_config(servers: &Servers) -> Config {
    Config {
        eventstore_database_url: url(servers, "eventstore", None, "eventstoredb").into(),
        orders_database_url: url(servers, "orders", None, "ordersdb").into(),
        payments_database_url: url(servers, "payments", Some("s3cr%27t"), "paymentsdb").into(),
        admin_database_url: Some(servers.postgres().url("postgres").into()),
        skip_nats: true,
        ..servers.config()
    }
}

async fn connect(url: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(url).await
}

/// The owners of the tables of `database`'s `public` schema, read as the administrator.
async fn table_owners(servers: &Servers, database: &str) -> Vec<(String, String)> {
    let pool = servers.sql(database).await;
    let owners = sqlx::query_as(
        "SELECT tablename::TEXT, tableowner::TEXT FROM pg_tables WHERE schemaname = 'public' \
         ORDER BY tablename",
    )
    .fetch_all(&pool)
    .await
    .expect("pg_tables readable");
    pool.close().await;
    owners
}

#[tokio::test]
async fn each_context_gets_a_login_role_that_owns_its_database_and_tables() {
    let servers = Servers::start();
    let report = bootstrapper::run(&role_config(&servers))
        .await
        .expect("bootstrap succeeds");

    for (database, role) in CONTEXTS {
        assert_eq!(
            report.outcome(&format!("database {database}")),
            Some(Outcome::Created),
            "{report:#?}"
        );
        assert_eq!(
            report.outcome(&format!("role {role}")),
            Some(Outcome::Created),
            "{report:#?}"
        );
        assert_eq!(
            report.outcome(&format!("access {database}")),
            Some(Outcome::Updated),
            "{report:#?}"
        );
    }
    for context in Context::ALL {
        assert_eq!(
            report.outcome(&format!("migrations {context}")),
            Some(Outcome::Migrated(migrations(context))),
            "{report:#?}"
        );
    }

    let admin = servers.sql("postgres").await;
    for (database, role) in CONTEXTS {
        let (login, superuser, create_role, create_db): (bool, bool, bool, bool) = sqlx::query_as(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_one(&admin)
        .await
        .unwrap_or_else(|err| panic!("role {role} exists: {err}"));
        assert!(login, "{role} may log in");
        assert!(
            !superuser && !create_role && !create_db,
            "{role} has no power beyond its database"
        );
        let owner: String = sqlx::query_scalar(
            "SELECT r.rolname::TEXT FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba \
             WHERE d.datname = $1",
        )
        .bind(database)
        .fetch_one(&admin)
        .await
        .expect("database owner");
        assert_eq!(owner, role, "owner of {database}");

        let owners = table_owners(&servers, database).await;
        assert!(
            owners.len() >= 3,
            "{database} holds its tables and _sqlx_migrations: {owners:?}"
        );
        for (table, owner) in owners {
            assert_eq!(owner, role, "owner of {database}.{table}");
        }
    }
    // Only the role whose URL had a password got one (trust auth does not check it, but it is set).
    let with_password: Vec<String> = sqlx::query_scalar(
        "SELECT rolname::TEXT FROM pg_authid WHERE rolname IN ('eventstore', 'orders', 'payments') \
         AND rolpassword IS NOT NULL ORDER BY rolname",
    )
    .fetch_all(&admin)
    .await
    .expect("pg_authid readable by the superuser");
    assert_eq!(with_password, ["payments"]);
    admin.close().await;
}

#[tokio::test]
async fn a_role_works_in_its_own_database_and_is_refused_in_the_others() {
    let servers = Servers::start();
    bootstrapper::run(&role_config(&servers))
        .await
        .expect("bootstrap succeeds");

    for (database, role) in CONTEXTS {
        let mut own = connect(&url(&servers, role, None, database))
            .await
            .unwrap_or_else(|err| panic!("{role} connects to {database}: {err}"));
        // Write and read in a table of its own context: the role has every right it needs.
        let table = match role {
            "eventstore" => "outbox",
            "orders" => "order_items",
            _ => "wallets",
        };
        let mut tx = own.begin().await.expect("transaction");
        sqlx::raw_sql(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|err| panic!("{role} deletes from {table}: {err}"));
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await
            .unwrap_or_else(|err| panic!("{role} reads {table}: {err}"));
        assert_eq!(rows, 0);
        tx.rollback().await.expect("rollback");
        own.close().await.expect("close");

        for (other, _) in CONTEXTS.iter().filter(|(other, _)| *other != database) {
            let err = connect(&url(&servers, role, None, other))
                .await
                .err()
                .unwrap_or_else(|| panic!("{role} must not open {other}"));
            assert_eq!(
                pipeline_runtime::db::sqlstate(&err).as_deref(),
                Some(INSUFFICIENT_PRIVILEGE),
                "{role} on {other}: {err}"
            );
            assert!(
                err.to_string().contains("permission denied for database"),
                "{role} on {other}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn a_second_run_with_roles_reports_every_step_unchanged() {
    let servers = Servers::start();
    let config = Config {
        skip_nats: false,
        ..role_config(&servers)
    };
    let first = bootstrapper::run(&config)
        .await
        .expect("first run succeeds");
    let owners_before = table_owners(&servers, "ordersdb").await;

    let second = bootstrapper::run(&config)
        .await
        .expect("second run succeeds");
    assert!(second.all_unchanged(), "{second:#?}");
    let names = |report: &bootstrapper::Report| {
        report
            .steps
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&second), names(&first));
    assert_eq!(
        names(&second)[..12],
        [
            "database eventstoredb",
            "database ordersdb",
            "database paymentsdb",
            "role eventstore",
            "role orders",
            "role payments",
            "access eventstoredb",
            "access ordersdb",
            "access paymentsdb",
            "migrations eventstore",
            "migrations orders",
            "migrations payments",
        ]
    );
    assert_eq!(table_owners(&servers, "ordersdb").await, owners_before);
}

#[tokio::test]
async fn a_deployment_bootstrapped_as_root_is_handed_over_to_the_roles() {
    let servers = Servers::start();
    let as_root = Config {
        skip_nats: true,
        ..servers.config()
    };
    let report = bootstrapper::run(&as_root)
        .await
        .expect("root run succeeds");
    assert!(
        report.steps.iter().all(|s| !s.name.starts_with("role ")),
        "URLs naming the administrator need no role: {report:#?}"
    );
    for (_, owner) in table_owners(&servers, "paymentsdb").await {
        assert_eq!(owner, "root");
    }

    let report = bootstrapper::run(&role_config(&servers))
        .await
        .expect("run with roles succeeds");
    assert_eq!(
        report.outcome("database paymentsdb"),
        Some(Outcome::Unchanged)
    );
    assert_eq!(report.outcome("role payments"), Some(Outcome::Created));
    assert_eq!(
        report.outcome("access paymentsdb"),
        Some(Outcome::Updated),
        "{report:#?}"
    );
    assert_eq!(
        report.outcome("migrations payments"),
        Some(Outcome::Unchanged),
        "the roles see the migrations root applied"
    );
    for (table, owner) in table_owners(&servers, "paymentsdb").await {
        assert_eq!(owner, "payments", "owner of paymentsdb.{table}");
    }

    let again = bootstrapper::run(&role_config(&servers))
        .await
        .expect("third run succeeds");
    assert!(again.all_unchanged(), "{again:#?}");
}

#[tokio::test]
async fn the_orders_reader_reads_the_read_model_and_cannot_write_it() {
    let servers = Servers::start();
    let config = Config {
        orders_reader_database_url: Some(url(&servers, "ordersvc", Some("pw"), "ordersdb").into()),
        ..role_config(&servers)
    };
    let report = bootstrapper::run(&config)
        .await
        .expect("bootstrap succeeds");
    assert_eq!(report.outcome("role ordersvc"), Some(Outcome::Created));
    assert_eq!(
        report.outcome("grants ordersvc"),
        Some(Outcome::Updated),
        "{report:#?}"
    );

    let mut reader = connect(&url(&servers, "ordersvc", None, "ordersdb"))
        .await
        .expect("the reader connects to ordersdb");
    for table in ["orders", "order_items"] {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut reader)
            .await
            .unwrap_or_else(|err| panic!("the reader reads {table}: {err}"));
        assert_eq!(rows, 0);
    }
    let err = sqlx::raw_sql("DELETE FROM orders")
        .execute(&mut reader)
        .await
        .expect_err("the reader may not write");
    assert_eq!(
        pipeline_runtime::db::sqlstate(&err).as_deref(),
        Some(INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    let err = sqlx::raw_sql("CREATE TABLE mine (id INT8)")
        .execute(&mut reader)
        .await
        .expect_err("the reader may not create tables");
    assert_eq!(
        pipeline_runtime::db::sqlstate(&err).as_deref(),
        Some(INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    reader.close().await.expect("close");
    let err = connect(&url(&servers, "ordersvc", None, "paymentsdb"))
        .await
        .expect_err("the reader must not open paymentsdb");
    assert_eq!(
        pipeline_runtime::db::sqlstate(&err).as_deref(),
        Some(INSUFFICIENT_PRIVILEGE),
        "{err}"
    );

    let again = bootstrapper::run(&config).await.expect("second run");
    assert!(again.all_unchanged(), "{again:#?}");
}

#[tokio::test]
async fn the_deadline_watcher_reads_the_orders_and_nothing_else() {
    let servers = Servers::start();
    let config = Config {
        orders_reader_database_url: Some(url(&servers, "ordersvc", None, "ordersdb").into()),
        orders_watcher_database_url: Some(
            url(&servers, "deadlinewatcher", None, "ordersdb").into(),
        ),
        ..role_config(&servers)
    };
    let report = bootstrapper::run(&config)
        .await
        .expect("bootstrap succeeds");
    assert_eq!(
        report.outcome("role deadlinewatcher"),
        Some(Outcome::Created)
    );
    assert_eq!(
        report.outcome("grants deadlinewatcher"),
        Some(Outcome::Updated),
        "{report:#?}"
    );

    let mut watcher = connect(&url(&servers, "deadlinewatcher", None, "ordersdb"))
        .await
        .expect("the watcher connects to ordersdb");
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE status IN ('Pending', 'Paid') AND updated_at <= now()",
    )
    .fetch_one(&mut watcher)
    .await
    .expect("the watcher reads orders");
    assert_eq!(open, 0);
    for refused in [
        "SELECT count(*) FROM order_items",
        "UPDATE orders SET status = 'Cancelled'",
        "CREATE TABLE mine (id INT8)",
    ] {
        let err = sqlx::raw_sql(refused)
            .execute(&mut watcher)
            .await
            .expect_err(refused);
        assert_eq!(
            pipeline_runtime::db::sqlstate(&err).as_deref(),
            Some(INSUFFICIENT_PRIVILEGE),
            "{refused}: {err}"
        );
    }
    watcher.close().await.expect("close");
    let err = connect(&url(&servers, "deadlinewatcher", None, "eventstoredb"))
        .await
        .expect_err("the watcher must not open eventstoredb");
    assert_eq!(
        pipeline_runtime::db::sqlstate(&err).as_deref(),
        Some(INSUFFICIENT_PRIVILEGE),
        "{err}"
    );

    let again = bootstrapper::run(&config).await.expect("second run");
    assert!(again.all_unchanged(), "{again:#?}");
}

#[test]
fn settings_that_do_not_fit_together_are_refused_naming_the_variable() {
    let base = Config {
        admin_database_url: Some("postgresql://root@db:26257/postgres".into()),
        ..Config::default()
    };
    let cases = [
        (
            Config {
                orders_database_url: "postgresql://Orders:hunter2@db:26257/ordersdb".into(),
                ..base.clone()
            },
            "ORDERS_DATABASE_URL",
        ),
        (
            Config {
                payments_database_url: "postgresql://pg_pay:hunter2@db:26257/paymentsdb".into(),
                ..base.clone()
            },
            "PAYMENTS_DATABASE_URL",
        ),
        (
            Config {
                orders_reader_database_url: Some(
                    "postgresql://ordersvc:hunter2@db:26257/paymentsdb".into(),
                ),
                ..base.clone()
            },
            "ORDERS_READER_DATABASE_URL",
        ),
        (
            Config {
                orders_database_url: "postgresql://orders@db:26257/ordersdb".into(),
                orders_reader_database_url: Some(
                    "postgresql://orders:hunter2@db:26257/ordersdb".into(),
                ),
                ..base.clone()
            },
            "ORDERS_READER_DATABASE_URL",
        ),
        (
            Config {
                orders_reader_database_url: Some(
                    "postgresql://ordersvc:hunter2@db:26257/ordersdb".into(),
                ),
                orders_watcher_database_url: Some(
                    "postgresql://ordersvc:hunter2@db:26257/ordersdb".into(),
                ),
                ..base.clone()
            },
            "ORDERS_WATCHER_DATABASE_URL",
        ),
        (
            Config {
                admin_database_url: Some("postgresql://root:hunter2@db:port/postgres".into()),
                ..base.clone()
            },
            "BOOTSTRAP_DATABASE_URL",
        ),
    ];
    for (config, variable) in cases {
        let message = format!("{:#}", config.validate().expect_err("refused"));
        assert!(message.contains(variable), "{variable}: {message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
    base.validate()
        .expect("an administrator with root URLs is valid");
}
