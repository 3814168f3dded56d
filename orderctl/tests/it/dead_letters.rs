//! `orderctl dead-letters list|replay`.

use std::process::Command;

use pipeline_runtime::deadletter;

use crate::harness::Nats;

#[tokio::test]
async fn list_shows_every_dead_letter_and_filters_by_worker() {
    let nats = Nats::start().await;
    assert_eq!(
        nats.orderctl(&["dead-letters", "list"])
            .await
            .expect("runs"),
        "no dead letters\n"
    );
    let paid = nats
        .dead_letter("paymentworker", "created", "wallet database down")
        .await;
    let projected = nats
        .dead_letter(
            "querymodelworker",
            "approved",
            "event `approved` cannot follow status Pending",
        )
        .await;

    let all = nats
        .orderctl(&["dead-letters", "list"])
        .await
        .expect("runs");
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two letters:\n{all}");
    for column in [
        "SEQUENCE",
        "WORKER",
        "SUBJECT",
        "EVENT ID",
        "DELIVERIES",
        "REASON",
    ] {
        assert!(lines[0].contains(column), "{all}");
    }
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        first[..5],
        [
            "1",
            "paymentworker",
            "ORDERS.created",
            &paid.to_string(),
            "3"
        ]
    );
    assert!(lines[1].ends_with("wallet database down"), "{all}");
    assert!(lines[2].contains(&projected.to_string()), "{all}");

    let only = nats
        .orderctl(&["dead-letters", "list", "--worker", "querymodelworker"])
        .await
        .expect("runs");
    assert_eq!(only.lines().count(), 2, "{only}");
    assert!(only.contains(&projected.to_string()) && !only.contains(&paid.to_string()));
}

#[tokio::test]
async fn the_binary_replays_a_letter_onto_its_subject_and_removes_it() {
    let nats = Nats::start().await;
    let event_id = nats
        .dead_letter("paymentworker", "paymentdebited", "review rules missing")
        .await;
    let keep = nats
        .dead_letter("paymentworker", "created", "still broken")
        .await;
    let letters = deadletter::list(&nats.js, None).await.expect("list");
    let sequence = letters
        .iter()
        .find(|l| l.event_id == Some(event_id.to_string()))
        .expect("listed")
        .sequence;

    let output = Command::new(env!("CARGO_BIN_EXE_orderctl"))
        .args(["dead-letters", "replay", &sequence.to_string()])
        .env("NATS_URL", nats.server.url())
        .output()
        .expect("orderctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("replayed") && stdout.contains("ORDERS.paymentdebited"),
        "{stdout}"
    );

    let on_subject = nats.on_subject("ORDERS.paymentdebited").await;
    assert_eq!(on_subject.len(), 2, "the original and its replay");
    assert!(on_subject[1].contains(&event_id.to_string()));
    let left = deadletter::list(&nats.js, None).await.expect("list");
    assert_eq!(left.len(), 1, "only the other letter is left");
    assert_eq!(left[0].event_id, Some(keep.to_string()));
}

#[tokio::test]
async fn replay_all_of_one_worker_leaves_the_others() {
    let nats = Nats::start().await;
    nats.dead_letter("paymentworker", "created", "x").await;
    nats.dead_letter("querymodelworker", "created", "y").await;
    nats.dead_letter("querymodelworker", "approved", "z").await;

    let out = nats
        .orderctl(&[
            "dead-letters",
            "replay",
            "--all",
            "--worker",
            "querymodelworker",
        ])
        .await
        .expect("runs");
    assert!(out.ends_with("2 dead letter(s) replayed\n"), "{out}");
    let left = deadletter::list(&nats.js, None).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].worker, "paymentworker");
    assert_eq!(nats.on_subject("ORDERS.approved").await.len(), 2);
}

#[tokio::test]
async fn errors_are_one_line_and_exit_code_1() {
    let nats = Nats::start().await;
    nats.dead_letter("paymentworker", "created", "x").await;

    // A sequence that names no letter: nothing is replayed.
    let output = Command::new(env!("CARGO_BIN_EXE_orderctl"))
        .args(["dead-letters", "replay", "1", "999"])
        .env("NATS_URL", nats.server.url())
        .output()
        .expect("orderctl runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("999"), "{stderr}");
    assert_eq!(
        deadletter::list(&nats.js, None).await.expect("list").len(),
        1
    );

    // NATS unreachable.
    let port = testkit::free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_orderctl"))
        .args(["dead-letters", "list", "--nats-url"])
        .arg(format!("nats://127.0.0.1:{port}"))
        .output()
        .expect("orderctl runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach NATS"), "{stderr}");
}
