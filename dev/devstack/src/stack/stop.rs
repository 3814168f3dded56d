//! stop: the services first (in parallel), the event store, the trace store, nats-server when
//! ours, PostgreSQL (or HAProxy, the Patroni nodes and etcd).

use super::*;

impl Stack {
    /// SIGTERM to every service at once (they stop in parallel), each awaited; the event store
    /// last, so the workers' final appends still reach it; then the trace store (the services'
    /// last spans reach it), nats-server when ours, PostgreSQL.
    pub fn stop(&self) {
        let mut signalled = Vec::new();
        for name in WORKERS.iter().chain(&["ordersvc"]) {
            if let Some(pid) = self.live(name) {
                println!("stopping {name} (pid {pid})");
                signal(pid, "TERM");
                signalled.push(*name);
            }
        }
        for name in WORKERS
            .iter()
            .chain(&["ordersvc", "eventstore", "tracestore", "nats-server"])
        {
            self.stop_process(name, !signalled.contains(name));
        }
        if let Ok(pg) = PgTools::find() {
            self.stop_one("postgresql", &pg);
        }
        // Whatever the recorded profile: a pid file of the HA cluster means it runs.
        self.stop_ha();
        println!("The stack is stopped.");
    }

    /// [`Stack::stop_process`], or PostgreSQL through pg_ctl, or a Patroni node and its
    /// PostgreSQL.
    pub(super) fn stop_one(&self, name: &str, pg: &PgTools) {
        if name.starts_with("patroni-") {
            self.stop_patroni(name);
            return;
        }
        if name != "postgresql" {
            self.stop_process(name, true);
            return;
        }
        let dir = self.layout.pg_dir();
        if self.pg_running(pg) {
            let pid = self.live("postgresql").or(self.postmaster().0);
            match pid {
                Some(pid) => println!("stopping PostgreSQL (pid {pid})"),
                None => println!("stopping PostgreSQL"),
            }
            let timeout = self.layout.stop_timeout.as_secs().to_string();
            let stop = |mode: &str| {
                pg.command(pg.pg_ctl(), &dir)
                    .args(["stop", "-D"])
                    .arg(&dir)
                    .args(["-m", mode, "-w", "-t", &timeout])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            };
            if !stop("fast") {
                stop("immediate");
            }
            // pg_ctl returns once postmaster.pid is gone, a moment before the process itself.
            if let Some(pid) = pid {
                wait_gone(pid, self.layout.stop_timeout);
            }
        }
        forget_pid(&self.layout, "postgresql");
    }

    /// SIGTERM (unless `announce` is false: it was sent already), then SIGKILL after the stop
    /// timeout.
    pub(super) fn stop_process(&self, name: &str, announce: bool) {
        if let Some(pid) = self.live(name) {
            if announce {
                println!("stopping {name} (pid {pid})");
            }
            signal(pid, "TERM");
            if !wait_gone(pid, self.layout.stop_timeout) {
                println!(
                    "{name} did not stop within {}s: SIGKILL",
                    self.layout.stop_timeout.as_secs()
                );
                signal(pid, "KILL");
                wait_gone(pid, Duration::from_secs(10));
            }
        }
        forget_pid(&self.layout, name);
    }
}
