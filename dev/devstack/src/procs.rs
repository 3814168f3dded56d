//! The stack's processes as pid files: which still run, and stopping them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::host::process_alive;

use crate::settings::Layout;

/// Whether `pid` runs its program `expected` (`argv[0]`'s file name); `tracestore` is this
/// launcher's own binary run as `devstack trace-store`, PostgreSQL's postmaster `postgres…`,
/// `etcd-N` an etcd and `patroni-N` a Patroni.
fn runs(pid: u32, name: &str) -> bool {
    if !process_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // Right after spawn returns, the child may still be inside execve: the kernel wakes the
    // parent (the close-on-exec pipe closes) before it sets up the new program's arguments, so
    // /proc/PID/cmdline reads empty for a moment. Our own child, alive: still starting, not gone.
    if cmdline.is_empty() {
        return true;
    }
    let args: Vec<String> = cmdline
        .split(|byte| *byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    let program = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .map(|file| file.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name {
        "postgresql" => program.starts_with("postgres"),
        "tracestore" => args.iter().any(|arg| arg == "trace-store"),
        // Patroni is a Python script: python3 /usr/bin/patroni <config>.
        _ if name.starts_with("patroni-") => args.iter().take(2).any(|arg| {
            Path::new(arg)
                .file_name()
                .is_some_and(|file| file == "patroni")
        }),
        _ if name.starts_with("etcd-") => program == "etcd",
        _ => program == name,
    }
}

/// The pid recorded for `name` when that process still runs and is still `name` (pids get
/// reused).
pub fn live_pid(layout: &Layout, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(layout.pid_file(name)).ok()?;
    let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
    runs(pid, name).then_some(pid)
}

pub fn record_pid(layout: &Layout, name: &str, pid: u32) -> anyhow::Result<()> {
    let file = layout.pid_file(name);
    std::fs::write(&file, format!("{pid}\n"))
        .map_err(|error| anyhow::anyhow!("writing {}: {error}", file.display()))
}

pub fn forget_pid(layout: &Layout, name: &str) {
    let _ = std::fs::remove_file(layout.pid_file(name));
}

/// Sends `signal` (`TERM`, `KILL`) to `pid` through kill(1) (this workspace forbids `unsafe`).
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until `pid` is gone or `timeout` passed; whether it is gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}
