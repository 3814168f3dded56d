//! The `/proc` reader of the benchmarks, on lines of known shape and on this process.

use testkit::procfs::{
    ProcStat, parse_machine_busy, parse_stat, parse_switches, process, switches,
};

#[test]
fn a_stat_line_is_read_after_the_last_parenthesis_of_the_name() {
    let line = "4242 (tokio (rt) x) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 50 7 3 20 0 9 0";
    assert_eq!(
        parse_stat(line),
        Some(ProcStat {
            comm: "tokio (rt) x".to_owned(),
            ppid: 17,
            own_ticks: 300,
            reaped_ticks: 10,
        })
    );
    assert_eq!(parse_stat("4242 (broken"), None);
    assert_eq!(parse_stat("1 (x) S 0 1"), None);
}

#[test]
fn the_machine_is_busy_for_everything_but_idle_and_iowait() {
    let text = "cpu  100 5 40 9000 300 2 3 4 0 0\ncpu0 50 2 20 4500 150 1 1 2 0 0\n";
    assert_eq!(parse_machine_busy(text), Some(100 + 5 + 40 + 2 + 3 + 4));
    assert_eq!(parse_machine_busy("cpu  x"), None);
}

#[test]
fn this_process_can_be_read() {
    let me = process("self").expect("/proc/self/stat");
    assert!(me.ppid > 0);
}

#[test]
fn a_threads_switches_are_its_voluntary_and_involuntary_ones() {
    let status = "Name:\tpostgres\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
    assert_eq!(parse_switches(status), Some(127));
    assert_eq!(parse_switches("Name:\tx\n"), None, "no counters, no number");
    assert_eq!(parse_switches("voluntary_ctxt_switches:\tmany\n"), None);
}

#[test]
fn a_process_counts_the_switches_of_every_thread() {
    // A thread that went to sleep has switched at least once; `/proc/self/status` counts only the
    // leader's, `switches` every live thread's.
    let sleeper = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
    std::thread::sleep(std::time::Duration::from_millis(50));
    let leader = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let leader = parse_switches(&leader).expect("the leader's switches");
    let all = switches("self").expect("/proc/self/task");
    sleeper.join().expect("the sleeper ends");
    assert!(all > leader, "every thread {all}, the leader {leader}");
}
