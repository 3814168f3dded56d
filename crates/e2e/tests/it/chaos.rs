//! The chaos run at CI size: every process killed once and a worker frozen past its ack wait,
//! under a light load; every invariant must hold.

use e2e_tests::chaos::{self, Config};

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
