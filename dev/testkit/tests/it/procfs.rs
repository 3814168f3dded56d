//! The `/proc` reader of the benchmarks, on lines of known shape and on this process.

use testkit::procfs::{ProcStat, parse_machine_busy, parse_stat, process};

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
