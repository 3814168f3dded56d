//! Liveness, readiness, and the service on a real socket.

use std::time::Duration;

use axum::http::StatusCode;
use ordersvc::App;
use pipeline_runtime::nats::NatsArgs;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{Stack, get};

#[tokio::test]
async fn readiness_follows_the_database() {
    let mut stack = Stack::start().await;
    let ready = stack.call(get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    stack.postgres.stop().expect("PostgreSQL stops");

    // 503, naming the database; liveness does not depend on it.
    let down = stack.call(get("/readyz")).await;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.body
    );
    assert!(
        down.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("ordersdb")),
        "{}",
        down.body
    );
    assert_eq!(down.body["checks"]["ordersdb"], "down");
    assert_eq!(stack.call(get("/healthz")).await.status, StatusCode::OK);
    // A read while the database is down is a 503, not a 500.
    let read = stack
        .call(get(&format!("/api/orders/{}", uuid::Uuid::new_v4())))
        .await;
    assert_eq!(
        read.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        read.body
    );

    // Ready again once the database is back.
    stack
        .postgres
        .start_again()
        .expect("PostgreSQL starts again");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = stack.call(get("/readyz")).await;
        if answer.status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not ready: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_service_answers_on_its_socket_and_stops_gracefully() {
    testkit::init_tracing();
    // No dependency needs to be up for the service to start and report itself alive.
    let mut config = crate::harness::config(
        "http://127.0.0.1:1",
        "postgresql://root@127.0.0.1:1/ordersdb?sslmode=disable",
    );
    // Nor NATS: min_version reads re-read until its notices come.
    config.nats = NatsArgs::new("nats://127.0.0.1:1");
    let app = App::build(config).await.expect("ordersvc builds");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ordersvc\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#"{"status":"ok"}"#), "{response}");

    stop.send(()).expect("the service is running");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops in time")
        .expect("joins")
        .expect("stops without error");
}
