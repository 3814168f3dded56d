//! start, stop, status, env and logs of the dev stack: starting here, each kind of process in a
//! module of its own.

pub(crate) mod ha;
mod nats;
mod postgres;
mod status;
mod stop;
mod traces;

pub use nats::NATS_USERS;

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testkit::host::PgTools;

use crate::probe::{http_ok, nats_info, port_accepts, port_listening, port_owner};
use crate::procs::{forget_pid, live_pid, record_pid, signal, wait_gone};
use crate::services::{self, Detach, Endpoints, Ready, SERVICES, WORKERS, died};
use crate::settings::{Db, Layout, Settings, Zipkin};

/// An error whose message was printed already (the caller only exits with failure).
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed (see above)")
    }
}

impl std::error::Error for Reported {}

fn step(what: &str) {
    println!("==> {what}");
}

/// "port P, wanted for W, is already in use by X. …e.g.: VARIABLE=P+1 scripts/stack start"
fn port_taken(port: u16, what: &str, variable: &str) -> anyhow::Error {
    let owner = port_owner(port).unwrap_or_else(|| "another process".to_owned());
    anyhow::anyhow!(
        "port {port}, wanted for {what}, is already in use by {owner}.\n       Stop that process, \
         or pick another port, e.g.: {variable}={} scripts/stack start",
        port.saturating_add(1)
    )
}

/// What this run of `start` started, shared with the thread that stops it again on SIGINT or
/// SIGTERM; `None` once the start is over.
#[derive(Clone)]
struct Started(Arc<Mutex<Option<Vec<&'static str>>>>);

impl Default for Started {
    fn default() -> Started {
        Started(Arc::new(Mutex::new(Some(Vec::new()))))
    }
}

impl Started {
    /// Runs `launch`, which starts `name`, and records `name` (also when `launch` fails: it may
    /// have left something running), all while an interruption waits: it sees all or nothing.
    fn launch<T>(
        &self,
        name: &'static str,
        launch: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let result = launch();
        if let Some(list) = list.as_mut() {
            list.push(name);
        }
        result
    }

    /// The start is over: what it started, which an interruption no longer stops.
    fn finish(&self) -> Vec<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }
}

/// One stack: its folders and its settings.
pub struct Stack {
    pub layout: Layout,
    pub settings: Settings,
}

impl Stack {
    /// The stack of `STACK_DIR`, with the settings it was last started with.
    pub fn recorded() -> anyhow::Result<Stack> {
        let layout = Layout::from_env()?;
        let settings = Settings::recorded(&layout.settings_file())?;
        Ok(Stack { layout, settings })
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            pg_port: self.settings.pg_port,
            nats_url: format!("nats://127.0.0.1:{}", self.settings.nats_port),
            eventstore_port: self.settings.eventstore_port,
            ordersvc_port: self.settings.ordersvc_port,
        }
    }

    /// The Zipkin that `orderctl trace` and the links read.
    pub fn zipkin_url(&self) -> Option<String> {
        (self.settings.zipkin != Zipkin::Caller)
            .then(|| format!("http://127.0.0.1:{}", self.settings.zipkin_port))
    }

    fn live(&self, name: &str) -> Option<u32> {
        live_pid(&self.layout, name)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.layout.bin_dir.join(name)
    }

    // --- start ---------------------------------------------------------------------------

    /// Starts what is not running, bootstraps, waits until healthy. On failure everything this
    /// run started is stopped again and the error is [`Reported`].
    pub fn start() -> anyhow::Result<Stack> {
        let layout = Layout::from_env()?;
        for dir in [layout.dir.clone(), layout.log_dir(), layout.pid_dir()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let part_runs = SERVICES
            .iter()
            .chain(&["nats-server", ha::HAPROXY])
            .chain(&ha::ETCD)
            .chain(&ha::PATRONI)
            .any(|name| live_pid(&layout, name).is_some());
        // Part of the stack runs: keep its ports rather than the caller's.
        let settings = if part_runs {
            Settings::recorded(&layout.settings_file())?
        } else {
            Settings::from_env()?
        };
        let mut stack = Stack { layout, settings };
        let pg = PgTools::find().context("the stack needs PostgreSQL")?;

        if SERVICES.iter().all(|name| stack.live(name).is_some()) && stack.db_running(&pg) {
            println!("The stack is already running (scripts/stack status).");
            stack.print_env();
            return Ok(stack);
        }
        services::check_binaries(
            &stack.layout.bin_dir,
            &["bootstrapper"]
                .into_iter()
                .chain(SERVICES)
                .collect::<Vec<_>>(),
            "build it (cargo build --bins) or unset STACK_BUILD",
        )?;
        // STACK_NATS_BIN and STACK_NATS_SYNC too (start_nats asks again when it starts one).
        stack.settings.nats_server()?;
        // The services' ports are checked before anything starts, and again when each starts.
        for (name, port, variable) in stack.service_ports() {
            if stack.live(name).is_none() && port_listening(port) {
                return Err(port_taken(port, name, variable));
            }
        }

        let started = Started::default();
        stack.undo_when_interrupted(&started);
        let result = stack.start_all(&pg, &started);
        let started = started.finish();
        match result {
            Ok(()) => Ok(stack),
            Err(error) => {
                eprintln!("\nstack: {error:#}");
                stack.undo("start failed", &started);
                Err(Reported.into())
            }
        }
    }

    /// Stops `started`, last first, saying `why`.
    fn undo(&self, why: &str, started: &[&str]) {
        if started.is_empty() {
            return;
        }
        eprintln!(
            "\nstack: {why}; stopping what this run started: {}",
            started.join(" ")
        );
        let pg = PgTools::find().ok();
        for name in started.iter().rev() {
            match &pg {
                Some(pg) => self.stop_one(name, pg),
                None if name.starts_with("patroni-") => self.stop_patroni(name),
                None => self.stop_process(name, true),
            }
        }
    }

    /// On SIGINT or SIGTERM during start (a Ctrl-C), stops what this run started and exits 130,
    /// as a failed start does: the processes run in their own process groups, so the signal
    /// does not reach them.
    fn undo_when_interrupted(&self, started: &Started) {
        let stack = Stack {
            layout: self.layout.clone(),
            settings: self.settings.clone(),
        };
        let started = started.clone();
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(pipeline_runtime::shutdown::signal());
            // Held until exit: the start starts nothing more meanwhile.
            let list = started.0.lock().unwrap_or_else(PoisonError::into_inner);
            stack.undo("interrupted", list.as_deref().unwrap_or_default());
            std::process::exit(130);
        });
    }

    fn service_ports(&self) -> [(&'static str, u16, &'static str); 2] {
        [
            (
                "eventstore",
                self.settings.eventstore_port,
                "STACK_EVENTSTORE_PORT",
            ),
            (
                "ordersvc",
                self.settings.ordersvc_port,
                "STACK_ORDERSVC_PORT",
            ),
        ]
    }

    /// Whether the stack's PostgreSQL (of its `STACK_DB`) runs whole.
    fn db_running(&self, pg: &PgTools) -> bool {
        match self.settings.db {
            Db::Single => self.pg_running(pg),
            Db::Ha => self.ha_running(),
        }
    }

    fn start_all(&mut self, pg: &PgTools, started: &Started) -> anyhow::Result<()> {
        match self.settings.db {
            Db::Single => self.start_pg(pg, started)?,
            Db::Ha => self.start_ha(started)?,
        }
        self.start_nats(started)?;
        self.start_zipkin(started)?;
        self.settings.save(&self.layout.settings_file())?;
        if crate::certs::prepare_stack(&self.layout)?.is_some() {
            step(
                "event store with mTLS: a certificate per service in tls/ (STACK_MTLS=0 turns it off)",
            );
        }

        step("bootstrapper (databases, migrations, stream ORDERS, consumers)");
        let log = self.layout.log("bootstrapper");
        let _ = std::fs::remove_file(&log);
        let mut child = services::spawn(
            &self.bin("bootstrapper"),
            &[],
            &self.service_env("bootstrapper")?,
            &["NATS_USER", "NATS_PASSWORD"],
            &log,
            Detach::No,
        )?;
        let status = child.wait().context("waiting for the bootstrapper")?;
        if !status.success() {
            return Err(died("bootstrapper", "failed", &log));
        }

        step(&format!("starting {}", SERVICES.join(" ")));
        let endpoints = self.endpoints();
        for (name, port, variable) in self.service_ports() {
            let pid = self.start_service(name, Some((port, variable)), started)?;
            let log = self.layout.log(name);
            services::wait_ready(
                name,
                endpoints.readiness(name),
                Duration::from_secs(60),
                &log,
                || testkit::host::process_alive(pid),
            )?;
        }
        let mut workers = Vec::new();
        for name in WORKERS {
            workers.push((name, self.start_service(name, None, started)?));
        }
        // A worker still alive after a short settle time got past its configuration and its
        // first connections (a bad variable, an unreachable database or a missing consumer end it).
        std::thread::sleep(Duration::from_secs(2));
        for (name, pid) in workers {
            if !testkit::host::process_alive(pid) {
                return Err(died(name, "exited during start-up", &self.layout.log(name)));
            }
        }
        let readyz = Ready::Http(self.settings.ordersvc_port, "/readyz");
        services::wait_ready(
            "ordersvc",
            readyz,
            Duration::from_secs(30),
            &self.layout.log("ordersvc"),
            || true,
        )
        .map_err(|_| {
            died(
                "ordersvc",
                "is up but /readyz does not answer 200 (database or event store unreachable)",
                &self.layout.log("ordersvc"),
            )
        })?;

        println!(
            "\nThe stack is running. State and logs: {}",
            self.layout.dir.display()
        );
        self.print_env();
        println!(
            "\n  scripts/stack status | scripts/stack logs [-f] [SERVICE] | scripts/stack stop"
        );
        Ok(())
    }

    /// The environment of `name`: where everything is, its NATS user when the stack's NATS asks
    /// for one, and the stack's defaults for logs and span export.
    fn service_env(&self, name: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut env = self.endpoints().env(Some(name));
        if let Some(certs) =
            crate::certs::ServiceCerts::existing(&crate::certs::stack_dir(&self.layout))
        {
            let vars = certs.env(
                Some(name).filter(|n| *n != "bootstrapper"),
                self.settings.eventstore_port,
            );
            crate::certs::override_env(&mut env, vars);
        }
        if self.settings.zipkin != Zipkin::Caller {
            env.push((
                "ZIPKIN_ENDPOINT".to_owned(),
                format!(
                    "http://127.0.0.1:{}/api/v2/spans",
                    self.settings.zipkin_port
                ),
            ));
        }
        let or_default = |name: &str, default: &str| {
            (
                name.to_owned(),
                std::env::var(name).unwrap_or_else(|_| default.to_owned()),
            )
        };
        env.push(or_default("RUST_LOG", "info"));
        // Spans leave each service every second (default 5): a trace is whole soon after its
        // order.
        env.push(or_default("OTEL_BSP_SCHEDULE_DELAY", "1000"));
        // Plain text in the log files.
        env.push(("NO_COLOR".to_owned(), "1".to_owned()));
        if self.settings.nats_auth && NATS_USERS.contains(&name) {
            env.push(("NATS_USER".to_owned(), name.to_owned()));
            env.push(("NATS_PASSWORD".to_owned(), self.nats_password(name)?));
        }
        if name == "ordersvc" {
            env.extend(crate::tokens::ordersvc_env(&self.layout.dir)?);
        }
        Ok(env)
    }

    /// Starts `name` unless it runs; returns its pid.
    fn start_service(
        &self,
        name: &'static str,
        port: Option<(u16, &str)>,
        started: &Started,
    ) -> anyhow::Result<u32> {
        if let Some(pid) = self.live(name) {
            println!("{name} is already running (pid {pid})");
            return Ok(pid);
        }
        forget_pid(&self.layout, name);
        if let Some((port, variable)) = port
            && port_listening(port)
        {
            return Err(port_taken(port, name, variable));
        }
        let env = self.service_env(name)?;
        started.launch(name, || {
            let child = services::spawn(
                &self.bin(name),
                &[],
                &env,
                &["NATS_USER", "NATS_PASSWORD"],
                &self.layout.log(name),
                Detach::Yes,
            )?;
            record_pid(&self.layout, name, child.id())?;
            Ok(child.id())
        })
    }
}
