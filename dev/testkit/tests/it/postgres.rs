use sqlx::{Connection, PgConnection, Row};
use testkit::Postgres;

use crate::support::{assert_cleaned_up_after_a_panic, port_accepts};

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .expect("connecting to PostgreSQL")
}

async fn count_rows(url: &str) -> i64 {
    let mut conn = connect(url).await;
    sqlx::query("SELECT count(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .expect("counting orders")
        .get(0)
}

async fn database_with_one_row(pg: &Postgres) -> String {
    let url = pg.fresh_database().await.expect("creating a database");
    let mut conn = connect(&url).await;
    sqlx::query("CREATE TABLE orders (id INT8 PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .expect("creating a table");
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut conn)
        .await
        .expect("inserting a row");
    url
}

#[tokio::test]
async fn postgres_runs_serializable_and_creates_databases() {
    testkit::init_tracing();
    let pg = Postgres::start().expect("starting PostgreSQL");
    assert!(pg.is_running());
    assert!(port_accepts(pg.port()));
    assert_eq!(
        pg.url("orders"),
        format!(
            "postgresql://root@127.0.0.1:{}/orders?sslmode=disable",
            pg.port()
        )
    );

    let mut conn = connect(&pg.url("postgres")).await;
    let isolation: String = sqlx::query_scalar("SHOW default_transaction_isolation")
        .fetch_one(&mut conn)
        .await
        .expect("reading the isolation level");
    assert_eq!(isolation, "serializable");

    let url = pg.create_database("orders").await.expect("creating orders");
    assert_eq!(url, pg.url("orders"));
    let mut orders = connect(&url).await;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut orders)
        .await
        .expect("asking for the database");
    assert_eq!(database, "orders");
    assert!(
        pg.log().contains("database system is ready"),
        "{}",
        pg.log()
    );
}

#[tokio::test]
async fn a_stopped_postgres_refuses_connections_and_keeps_its_data_when_started_again() {
    testkit::init_tracing();
    let mut pg = Postgres::start().expect("starting PostgreSQL");
    let url = database_with_one_row(&pg).await;
    let port = pg.port();

    pg.stop().expect("stopping PostgreSQL");
    assert!(!pg.is_running());
    assert!(!port_accepts(port));
    assert!(PgConnection::connect(&url).await.is_err());
    pg.stop().expect("stopping twice is harmless");

    pg.start_again().expect("starting PostgreSQL again");
    assert!(pg.is_running());
    assert_eq!(pg.port(), port);
    assert_eq!(count_rows(&url).await, 1);

    // A crash loses nothing that was committed: recovery replays the WAL.
    let mut conn = connect(&url).await;
    sqlx::query("INSERT INTO orders (id) VALUES (2)")
        .execute(&mut conn)
        .await
        .expect("inserting a second row");
    pg.kill().expect("crashing PostgreSQL");
    assert!(!pg.is_running());
    assert!(!port_accepts(port));
    pg.start_again().expect("starting PostgreSQL after a crash");
    assert_eq!(count_rows(&url).await, 2);
}

#[test]
fn dropping_postgres_removes_its_folder_and_closes_its_port() {
    let pg = Postgres::start().expect("starting PostgreSQL");
    let (dir, port) = (pg.dir().to_path_buf(), pg.port());
    assert!(dir.join("data").is_dir());

    drop(pg);
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(!port_accepts(port));
}

#[test]
fn postgres_is_cleaned_up_when_a_test_panics() {
    assert_cleaned_up_after_a_panic(|| {
        let pg = Postgres::start().expect("starting PostgreSQL");
        let (dir, port) = (pg.dir().to_path_buf(), pg.port());
        (Box::new(pg), dir, port)
    });
}

#[test]
fn start_again_explains_itself_when_the_port_is_taken() {
    let mut pg = Postgres::start().expect("starting PostgreSQL");
    pg.stop().expect("stopping PostgreSQL");
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", pg.port())).expect("taking the port");

    let error = pg.start_again().expect_err("the port is taken");
    let message = format!("{error:#}");
    assert!(message.contains("Address already in use"), "{message}");
    assert!(!pg.is_running());
}
