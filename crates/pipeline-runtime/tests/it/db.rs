//! What sqlx returns when a connection to PostgreSQL breaks or its server turns read-only (what a
//! failover does), and that the pool does not hand such a connection out again.

use std::time::Duration;

use pipeline_runtime::db;
use sqlx::PgPool;
use testkit::{CutProxy, Postgres};

struct World {
    postgres: Postgres,
    proxy: CutProxy,
    /// The database, directly.
    direct: String,
    /// A pool of one connection, through the proxy.
    pool: PgPool,
}

async fn world() -> World {
    testkit::init_tracing();
    let postgres = Postgres::start().expect("PostgreSQL starts");
    let direct = postgres.fresh_database().await.expect("a database");
    let proxy = CutProxy::to_port(postgres.port()).await.expect("proxy");
    let pool = db::lazy_pool(&proxy.url_for(&direct), 1, Duration::from_secs(5)).expect("pool");
    sqlx::query("CREATE TABLE t (id INT PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("table");
    World {
        postgres,
        proxy,
        direct,
        pool,
    }
}

async fn insert(pool: &PgPool, id: i32) -> Result<(), sqlx::Error> {
    db::retry(|| async {
        let mut tx = db::begin_guarded(pool).await?;
        sqlx::query("INSERT INTO t VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    })
    .await
}

async fn backend_pid(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pid")
}

async fn rows(world: &World) -> i64 {
    let direct = PgPool::connect(&world.direct).await.expect("connect");
    let n = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&direct)
        .await
        .expect("count");
    direct.close().await;
    n
}

#[tokio::test]
async fn a_connection_cut_under_its_commit_is_an_outage_although_the_commit_happened() {
    let world = world().await;
    world.proxy.arm_commit();
    let err = insert(&world.pool, 1)
        .await
        .expect_err("the commit's answer never came");
    assert_eq!(world.proxy.cuts(), 1, "sqlx sends COMMIT as a simple query");
    assert!(
        matches!(&err, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof),
        "{err:?}"
    );
    assert!(db::is_unavailable(&err), "{err:?}");
    assert_eq!(rows(&world).await, 1, "the server committed");
    // Retried, as every caller does: the same effect, not a second one.
    insert(&world.pool, 1).await.expect("the retry");
    assert_eq!(rows(&world).await, 1);
}

#[tokio::test]
async fn a_connection_cut_under_a_query_is_an_outage_and_the_pool_opens_another() {
    let world = world().await;
    let before = backend_pid(&world.pool).await;
    world.proxy.arm("cut-here", 1);
    let err = sqlx::query("SELECT 'cut-here'")
        .execute(&world.pool)
        .await
        .expect_err("cut");
    assert!(matches!(err, sqlx::Error::Io(_)), "{err:?}");
    assert!(db::is_unavailable(&err), "{err:?}");
    assert_ne!(backend_pid(&world.pool).await, before);
}

#[tokio::test]
async fn a_connection_the_server_terminated_is_an_outage_and_the_pool_opens_another() {
    let world = world().await;
    let before = backend_pid(&world.pool).await;
    // Back in the pool (its release check done), the connection is then ended under it.
    testkit::eventually(
        Duration::from_secs(10),
        "the connection to be idle in the pool",
        || async { (world.pool.num_idle() == 1).then_some(()) },
    )
    .await;
    // What a node's fast shutdown does to each session (SQLSTATE 57P01), without stopping the node.
    let direct = PgPool::connect(&world.direct).await.expect("connect");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(before)
        .execute(&direct)
        .await
        .expect("terminate");
    testkit::eventually(
        Duration::from_secs(10),
        "the backend to be gone",
        || async {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                    .bind(before)
                    .fetch_one(&direct)
                    .await
                    .expect("pg_stat_activity");
            (left == 0).then_some(())
        },
    )
    .await;
    let err = insert(&world.pool, 1).await.expect_err("terminated");
    assert_eq!(db::sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    assert!(db::is_unavailable(&err), "{err:?}");
    insert(&world.pool, 1).await.expect("a new connection");
    assert_ne!(backend_pid(&world.pool).await, before);
    drop(world.postgres);
}

#[tokio::test]
async fn a_connection_to_a_node_that_turned_read_only_is_not_handed_out_again() {
    let world = world().await;
    // The pool's one connection now leads to a node that refuses writes, as a deposed leader's
    // sessions would if nothing cut them; the server stays up and answers pings.
    sqlx::query("SET default_transaction_read_only = on")
        .execute(&world.pool)
        .await
        .expect("read-only session");
    let err = insert(&world.pool, 1).await.expect_err("read-only");
    assert_eq!(
        db::sqlstate(&err).as_deref(),
        Some(db::READ_ONLY_SQL_TRANSACTION)
    );
    assert!(db::is_unavailable(&err), "{err:?}");
    insert(&world.pool, 1)
        .await
        .expect("the next write gets a new connection");
    assert_eq!(rows(&world).await, 1);
}

/// The batch statement of the planning tests.
const BATCH: &str = "SELECT id FROM t WHERE id = ANY($1)";

/// A batch statement after `calls` calls on the one connection of a pool (`open`) to a fresh
/// database, whose table `t` is empty (and analyzed so, when `analyzed`).
struct Prepared {
    _postgres: Postgres,
    pool: PgPool,
    /// The statement's name on its connection.
    name: String,
    generic_plans: i64,
    custom_plans: i64,
}

async fn prepared_after(
    open: fn(&str, u32, Duration) -> anyhow::Result<PgPool>,
    analyzed: bool,
    calls: usize,
) -> Prepared {
    testkit::init_tracing();
    let postgres = Postgres::start().expect("PostgreSQL starts");
    let url = postgres.fresh_database().await.expect("a database");
    let pool = open(&url, 1, Duration::from_secs(5)).expect("pool");
    let mut setup = vec!["CREATE TABLE t (id INT PRIMARY KEY)"];
    if analyzed {
        setup.push("ANALYZE t");
    }
    for statement in setup {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect(statement);
    }
    for _ in 0..calls {
        let found: Vec<i32> = sqlx::query_scalar(BATCH)
            .bind(vec![1, 2, 3])
            .fetch_all(&pool)
            .await
            .expect("the batch statement");
        assert!(found.is_empty());
    }
    // The pool has one connection: the one that prepared the statement answers.
    let (name, generic_plans, custom_plans) = sqlx::query_as(
        "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
    )
    .bind(BATCH)
    .fetch_one(&pool)
    .await
    .expect("the statement is prepared (sent in one round trip from the second call on)");
    Prepared {
        _postgres: postgres,
        pool,
        name,
        generic_plans,
        custom_plans,
    }
}

/// A prepared batch statement run many times while its table is empty (a fresh database) is still
/// planned for its parameters at every call: PostgreSQL's default would switch to a cached
/// generic plan after five calls and keep it while the table grows.
#[tokio::test]
async fn a_prepared_batch_statement_is_planned_for_its_parameters_at_every_call() {
    let prepared = prepared_after(db::lazy_pool, false, 12).await;
    assert_eq!(prepared.generic_plans, 0, "a generic plan was used");
    assert_eq!(prepared.custom_plans, 12);
}

/// A keyed pool plans a statement once per connection, and that plan reads by index even when it
/// was made on a table analyzed while empty: there PostgreSQL's generic plan of a batch statement
/// is a sequential scan, which the long-lived connection would keep while the table grows.
#[tokio::test]
async fn a_keyed_pool_plans_once_and_reads_by_index_a_table_analyzed_while_empty() {
    let prepared = prepared_after(db::keyed_pool, true, 3).await;
    assert_eq!(
        (prepared.generic_plans, prepared.custom_plans),
        (3, 0),
        "planned once, generically"
    );
    let explain = format!("EXPLAIN EXECUTE {}(NULL)", prepared.name);
    let plan: Vec<String> = sqlx::query_scalar(&explain)
        .fetch_all(&prepared.pool)
        .await
        .expect("the cached plan");
    let plan = plan.join("\n");
    // Expected: the primary key's index answers; the table is never read in full.
    assert!(
        plan.contains("t_pkey") && !plan.contains("Seq Scan"),
        "{plan}"
    );
}
