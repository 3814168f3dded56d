//! The binary's start: the whole configuration is parsed and checked before anything is bound, so a
//! bad variable leaves no port taken and no server half started.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_eventstore");

/// Variables of ours the test's environment might carry.
const OURS: [&str; 12] = [
    "EVENTSTORE_ADDR",
    "EVENTSTORE_DATABASE_URL",
    "EVENTSTORE_BATCH_SIZE",
    "EVENTSTORE_TLS_CERT",
    "EVENTSTORE_TLS_KEY",
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TLS_CA",
    "ZIPKIN_ENDPOINT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
];

/// Runs the event store with `env` on an address this test holds, and returns its exit code and
/// stderr. A start that bound before checking its configuration would stop at the address
/// (`EVENTSTORE_ADDR`) instead of at the bad variable.
fn start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let held = TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let addr = held.local_addr().expect("address").to_string();
    let mut command = Command::new(BINARY);
    for variable in OURS {
        command.env_remove(variable);
    }
    command
        .env("EVENTSTORE_ADDR", &addr)
        .env("ZIPKIN_ENDPOINT", "")
        // Nothing answers here: a start that got as far as NATS would say so.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the event store binary runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the event store did not stop within 20 s with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    drop(held);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_variable_exits_2_naming_it_before_the_port_is_bound() {
    // The control: with a good configuration the start reaches the held port and fails there.
    let (code, stderr) = start(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("EVENTSTORE_ADDR"), "{stderr}");

    let cases = [
        (
            "EVENTSTORE_DATABASE_URL",
            "postgresql://es:hunter2@db:port/eventstoredb",
        ),
        ("EVENTSTORE_BATCH_SIZE", "0"),
        ("EVENTSTORE_TLS_CERT", "/nonexistent/server.pem"),
        ("NATS_URL", "nats://bad host:4222"),
        ("ZIPKIN_ENDPOINT", "ftp://zipkin/"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
    ];
    for (variable, value) in cases {
        let (code, stderr) = start(&[(variable, value)]);
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
        assert!(
            !stderr.contains("EVENTSTORE_ADDR") && !stderr.contains("listening"),
            "{variable}={value}: stopped before the address: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}
