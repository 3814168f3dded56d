//! The pipeline's services as processes: which there are and in what order they start, the
//! environment each one gets, how one is spawned with a log file and when it counts as ready. The
//! dev stack and the end-to-end tests' `Pipeline` both start their services through this.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::probe::{http_ok, port_accepts};

/// The pipeline's services, in start order: the event store first, ordersvc next, then the
/// workers, which need the event store and the stream (and are stopped first, for that reason).
pub const SERVICES: [&str; 6] = [
    "eventstore",
    "ordersvc",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
    "deadlinewatcher",
];

/// The services without a port of their own. deadlinewatcher starts and stops with them.
pub const WORKERS: [&str; 4] = [
    "paymentworker",
    "reviewworker",
    "querymodelworker",
    "deadlinewatcher",
];

/// Where the services find each other and their databases, all on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// PostgreSQL, superuser `root`, trust auth.
    pub pg_port: u16,
    /// `NATS_URL` (a cluster's several URLs, comma-separated, work too).
    pub nats_url: String,
    pub eventstore_port: u16,
    pub ordersvc_port: u16,
}

impl Endpoints {
    /// `database` as role `user` (no password: trust auth on 127.0.0.1, so grants, not passwords,
    /// keep the roles apart).
    pub fn role_url(&self, user: &str, database: &str) -> String {
        format!(
            "postgresql://{user}@127.0.0.1:{}/{database}?sslmode=disable",
            self.pg_port
        )
    }

    /// The HTTP API's base URL.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ordersvc_port)
    }

    /// The variables every process of the pipeline reads, the bootstrapper included (`service`
    /// `None`), as `service` gets them: ordersvc and deadlinewatcher read `ordersdb` as the
    /// read-only roles the bootstrapper made for them (only querymodelworker writes there).
    pub fn env(&self, service: Option<&str>) -> Vec<(String, String)> {
        let orders = match service {
            Some("ordersvc") => self.role_url("ordersvc", "ordersdb"),
            Some("deadlinewatcher") => self.role_url("deadlinewatcher", "ordersdb"),
            _ => self.role_url("orders", "ordersdb"),
        };
        [
            ("NATS_URL", self.nats_url.clone()),
            (
                "EVENTSTORE_ADDR",
                format!("127.0.0.1:{}", self.eventstore_port),
            ),
            (
                "EVENTSTORE_URL",
                format!("http://127.0.0.1:{}", self.eventstore_port),
            ),
            ("ORDERSVC_ADDR", format!("127.0.0.1:{}", self.ordersvc_port)),
            // The bootstrapper works as the superuser and gives each context a role of its own,
            // which its services connect as.
            ("BOOTSTRAP_DATABASE_URL", self.role_url("root", "postgres")),
            (
                "EVENTSTORE_DATABASE_URL",
                self.role_url("eventstore", "eventstoredb"),
            ),
            ("ORDERS_DATABASE_URL", orders),
            (
                "ORDERS_READER_DATABASE_URL",
                self.role_url("ordersvc", "ordersdb"),
            ),
            (
                "ORDERS_WATCHER_DATABASE_URL",
                self.role_url("deadlinewatcher", "ordersdb"),
            ),
            (
                "PAYMENTS_DATABASE_URL",
                self.role_url("payments", "paymentsdb"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// When `service` counts as started.
    pub fn readiness(&self, service: &str) -> Ready {
        match service {
            "eventstore" => Ready::Tcp(self.eventstore_port),
            "ordersvc" => Ready::Http(self.ordersvc_port, "/healthz"),
            _ => Ready::Running,
        }
    }
}

/// When a process counts as started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The port takes TCP connections.
    Tcp(u16),
    /// `GET path` on the port answers 2xx.
    Http(u16, &'static str),
    /// Running is all there is to see (a worker has no port).
    Running,
}

impl Ready {
    pub fn check(self) -> bool {
        match self {
            Ready::Tcp(port) => port_accepts(port),
            Ready::Http(port, path) => http_ok(port, path),
            Ready::Running => true,
        }
    }
}

/// How [`spawn`] starts a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// A child of the caller, which stops it (a test).
    No,
    /// In a process group of its own, so a Ctrl-C in the caller's terminal does not reach it: it
    /// outlives the caller (the dev stack).
    Yes,
}

/// Starts `program` with `env` on top of this process's environment (`remove` taken out first),
/// stdin closed and stdout and stderr appended to `log`.
pub fn spawn(
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    remove: &[&str],
    log: &Path,
    detach: Detach,
) -> anyhow::Result<Child> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(program);
    for name in remove {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("sharing the log file")?)
        .stderr(file);
    if detach == Detach::Yes {
        command.process_group(0);
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))
}

/// Waits (at most `timeout`) until `ready` holds, failing at once when `alive` says the process
/// is gone; the error names `name` and ends with the last 30 lines of `log`.
pub fn wait_ready(
    name: &str,
    ready: Ready,
    timeout: Duration,
    log: &Path,
    mut alive: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if !alive() {
            return Err(died(name, "exited during start-up", log));
        }
        if ready.check() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(died(
                name,
                &format!("did not become healthy within {} s", timeout.as_secs()),
                log,
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// "`name` `why`. Its log is …; the last lines:" and the end of the log, indented.
pub fn died(name: &str, why: &str, log: &Path) -> anyhow::Error {
    let text = testkit::host::read_lossy(log);
    let tail = testkit::host::tail(&text, 30);
    let indented: Vec<String> = tail.lines().map(|line| format!("    {line}")).collect();
    anyhow::anyhow!(
        "{name} {why}. Its log is {}; the last lines:\n{}",
        log.display(),
        indented.join("\n")
    )
}

/// Fails unless every one of `names` is an executable file in `bin_dir`.
pub fn check_binaries(bin_dir: &Path, names: &[&str], hint: &str) -> anyhow::Result<()> {
    for name in names {
        let path = bin_dir.join(name);
        if !path.is_file() {
            bail!("{} is missing: {hint}", path.display());
        }
    }
    Ok(())
}
