//! The chaos run at CI size: every process killed once and a worker frozen past its ack wait,
//! under a light load; every invariant must hold.

use chaos::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invariant_holds_while_each_process_is_killed_under_load() {
    let seed = 20_240_601;
    let config = Config {
        logs_dir: Some(std::env::temp_dir().join(format!("chaos-ci-{seed}"))),
        ..Config::ci(seed)
    };
    let report = chaos::run(config).await.expect("the chaos run completes");
    eprintln!("{report}");
    assert!(
        report.load.accepted > 0,
        "the load got no order accepted: {:?}",
        report.load.post_answers
    );
    let failed: Vec<&str> = report.failed().iter().map(|i| i.name).collect();
    assert!(
        report.passed(),
        "invariants that do not hold: {failed:?} (the report above has the details)"
    );
}

/// The deadline schedule at CI size: with 3 s deadlines, each worker frozen past them, the watcher
/// and the event store killed while they fall; every invariant must hold, the watcher's cancels
/// among them (only of overdue orders, once, never of an approved one; every debit refunded or kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invariant_holds_with_short_deadlines_while_their_steps_are_away() {
    let seed = 20_261_207;
    let config = Config {
        logs_dir: Some(std::env::temp_dir().join(format!("chaos-deadlines-ci-{seed}"))),
        ..Config::deadlines_ci(seed)
    };
    let report = chaos::run(config).await.expect("the chaos run completes");
    eprintln!("{report}");
    let deadlines = report
        .invariants
        .iter()
        .find(|invariant| invariant.key == "deadlines")
        .expect("the deadline invariant is checked");
    assert!(
        deadlines.checked > 0,
        "the faults made deadlines fall: {:?}",
        report.finals
    );
    let failed: Vec<&str> = report.failed().iter().map(|i| i.name).collect();
    assert!(
        report.passed(),
        "invariants that do not hold: {failed:?} (the report above has the details); deadlines: {deadlines:?}"
    );
}

/// The services' binaries are not beside this copy of the tool, so the pipeline cannot start: the
/// tool says the run could not be done and exits with 2 (not 1, "an invariant failed", nor a
/// panic's 101).
#[test]
fn a_run_whose_pipeline_cannot_start_exits_with_2() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let alone = dir.path().join("chaos");
    std::fs::copy(env!("CARGO_BIN_EXE_chaos"), &alone).expect("a copy of the chaos binary");
    let output = std::process::Command::new(&alone)
        .args(["--duration", "1s", "--seed", "1"])
        .output()
        .expect("the chaos binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the run could not be done") && stderr.contains("is missing beside"),
        "{stderr}"
    );
}
