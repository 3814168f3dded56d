//! The binary, as an operator runs it.

use std::process::{Command, Output};

use crate::{Servers, closed_port, migrations};

const BINARY: &str = env!("CARGO_BIN_EXE_bootstrapper");

/// Runs the binary with only the given variables of ours set, and logging left at its default.
fn bootstrapper(env: &[(&str, String)], args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    for variable in [
        "EVENTSTORE_DATABASE_URL",
        "ORDERS_DATABASE_URL",
        "PAYMENTS_DATABASE_URL",
        "BOOTSTRAP_DATABASE_URL",
        "ORDERS_READER_DATABASE_URL",
        "NATS_URL",
        "NATS_STREAM_REPLICAS",
        "BOOTSTRAPPER_CONNECT_TIMEOUT_SECS",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
    ] {
        command.env_remove(variable);
    }
    // With backtraces asked for, an error printed with `{:?}` or a panic would show one.
    command.env("RUST_BACKTRACE", "1");
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.args(args).output().expect("the binary runs")
}

#[test]
fn an_unreachable_database_exits_1_with_one_line() {
    let port = closed_port();
    let url = format!("postgresql://root:hunter2@127.0.0.1:{port}/eventstoredb?sslmode=disable");
    let output = bootstrapper(&[("EVENTSTORE_DATABASE_URL", url)], &[]);

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.trim().is_empty(), "nothing was done: {stdout}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&format!(
            "postgresql://root:***@127.0.0.1:{port}/eventstoredb"
        )),
        "{stderr}"
    );
    for text in ["panicked", "backtrace", "Backtrace", "hunter2"] {
        assert!(!stderr.contains(text), "{text}: {stderr}");
    }
}

#[test]
fn an_invalid_setting_exits_2_naming_the_variable() {
    let output = bootstrapper(
        &[(
            "ORDERS_DATABASE_URL",
            "postgresql://u:pw@h/orders-db".to_owned(),
        )],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ORDERS_DATABASE_URL"), "{stderr}");
    assert!(!stderr.contains(":pw@"), "{stderr}");
}

#[test]
fn a_run_prints_one_line_per_step_and_a_second_run_says_unchanged() {
    let servers = Servers::start();
    let env = [
        (
            "EVENTSTORE_DATABASE_URL",
            servers.postgres().url("eventstoredb"),
        ),
        ("ORDERS_DATABASE_URL", servers.postgres().url("ordersdb")),
        (
            "PAYMENTS_DATABASE_URL",
            servers.postgres().url("paymentsdb"),
        ),
        ("NATS_URL", servers.nats.url()),
    ];
    let first = bootstrapper(&env, &[]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{first:?}");
    assert!(
        stdout.contains("database eventstoredb: created\n"),
        "{stdout}"
    );
    let applied = bootstrapper::Outcome::Migrated(migrations(bootstrapper::Context::Orders));
    assert!(
        stdout.contains(&format!("migrations orders: {applied}\n")),
        "{stdout}"
    );
    assert!(stdout.contains("stream ORDERS: created\n"), "{stdout}");
    assert!(
        stdout.contains("consumer querymodelworker: created\n"),
        "{stdout}"
    );

    let second = bootstrapper(&env, &["--replicas", "1"]);
    assert!(second.status.success(), "{second:?}");
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(stdout.lines().count(), 14, "{stdout}");
    assert!(
        stdout.lines().all(|line| line.ends_with(": unchanged")),
        "{stdout}"
    );
}

#[test]
fn role_passwords_never_reach_the_output_even_with_sql_logging_on() {
    let servers = Servers::start();
    let port = servers.postgres().port();
    let role_url = |user: &str, database: &str| {
        format!("postgresql://{user}:hunter2@127.0.0.1:{port}/{database}?sslmode=disable")
    };
    let env = [
        ("BOOTSTRAP_DATABASE_URL", servers.postgres().url("postgres")),
        (
            "EVENTSTORE_DATABASE_URL",
            role_url("eventstore", "eventstoredb"),
        ),
        ("ORDERS_DATABASE_URL", role_url("orders", "ordersdb")),
        ("PAYMENTS_DATABASE_URL", role_url("payments", "paymentsdb")),
        (
            "ORDERS_READER_DATABASE_URL",
            role_url("ordersvc", "ordersdb"),
        ),
        // Every statement sqlx runs, at every level.
        ("RUST_LOG", "trace".to_owned()),
    ];
    let output = bootstrapper(&env, &["--skip-nats"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    for line in [
        "role eventstore: created",
        "role orders: created",
        "role payments: created",
        "role ordersvc: created",
        "access ordersdb: updated",
        "grants ordersvc: updated",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}: {stdout}");
    }
    assert!(
        stderr.contains("CREATE TABLE"),
        "sqlx statement logging is on, so the test means something: {stderr}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
