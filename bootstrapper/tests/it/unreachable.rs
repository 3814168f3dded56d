//! A server that cannot be reached is named in one clear error.

use bootstrapper::Config;

use crate::closed_port;

#[tokio::test]
async fn unreachable_nats_is_named_in_the_error() {
    let url = format!("nats://127.0.0.1:{}", closed_port());
    let config = Config {
        nats: pipeline_runtime::nats::NatsArgs::new(url.clone()),
        skip_sql: true,
        connect_timeout_secs: 1,
        ..Config::default()
    };
    let err = bootstrapper::run(&config)
        .await
        .expect_err("nothing listens there");
    let message = format!("{err:#}");
    assert!(message.contains("NATS"), "{message}");
    assert!(message.contains(&url), "{message}");
}

#[tokio::test]
async fn a_nats_password_never_reaches_the_error() {
    let config = Config {
        nats: pipeline_runtime::nats::NatsArgs::new(format!(
            "nats://app:hunter2@127.0.0.1:{}",
            closed_port()
        )),
        skip_sql: true,
        connect_timeout_secs: 1,
        ..Config::default()
    };
    let message = format!(
        "{:#}",
        bootstrapper::run(&config).await.expect_err("unreachable")
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("app:***@127.0.0.1"), "{message}");
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    let port = closed_port();
    let url = format!("postgresql://root:hunter2@127.0.0.1:{port}/eventstoredb?sslmode=disable");
    let err = bootstrapper::ensure_database(&url)
        .await
        .expect_err("nothing listens there");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!(
            "postgresql://root:***@127.0.0.1:{port}/eventstoredb"
        )),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn a_database_that_went_down_fails_the_run() {
    let mut postgres = testkit::Postgres::start().expect("PostgreSQL starts");
    let config = Config {
        eventstore_database_url: postgres.url("eventstoredb").into(),
        orders_database_url: postgres.url("ordersdb").into(),
        payments_database_url: postgres.url("paymentsdb").into(),
        skip_nats: true,
        connect_timeout_secs: 2,
        ..Config::default()
    };
    bootstrapper::run(&config)
        .await
        .expect("first run succeeds");
    postgres.stop().expect("PostgreSQL stops");
    let message = format!(
        "{:#}",
        bootstrapper::run(&config)
            .await
            .expect_err("database is down")
    );
    assert!(message.contains(&postgres.url("eventstoredb")), "{message}");

    postgres.start_again().expect("PostgreSQL starts again");
    let report = bootstrapper::run(&config)
        .await
        .expect("run succeeds once it is back");
    assert!(report.all_unchanged(), "{report:#?}");
}
