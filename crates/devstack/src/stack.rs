//! start, stop, status, env and logs of the dev stack.

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
use crate::settings::{Layout, Settings, Zipkin};

/// js.conf and nats-auth.conf of the repository, as this binary was built with them.
const JS_CONF: &str = include_str!("../../../js.conf");
const NATS_AUTH_CONF: &str = include_str!("../../../nats-auth.conf");

/// The users of nats-auth.conf; each gets a random password (deadlinewatcher needs no subject).
pub const NATS_USERS: [&str; 7] = [
    "eventstore",
    "ordersvc",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
    "bootstrapper",
    "orderctl",
];

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
            .chain(&["nats-server"])
            .any(|name| live_pid(&layout, name).is_some());
        // Part of the stack runs: keep its ports rather than the caller's.
        let settings = if part_runs {
            Settings::recorded(&layout.settings_file())?
        } else {
            Settings::from_env()?
        };
        let mut stack = Stack { layout, settings };
        let pg = PgTools::find().context("the stack needs PostgreSQL")?;

        if SERVICES.iter().all(|name| stack.live(name).is_some()) && stack.pg_running(&pg) {
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

    fn start_all(&mut self, pg: &PgTools, started: &Started) -> anyhow::Result<()> {
        self.start_pg(pg, started)?;
        self.start_nats(started)?;
        self.start_zipkin(started)?;
        self.settings.save(&self.layout.settings_file())?;

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

    // --- PostgreSQL ------------------------------------------------------------------------

    fn pg_running(&self, pg: &PgTools) -> bool {
        let dir = self.layout.pg_dir();
        dir.join("PG_VERSION").is_file()
            && pg
                .command(pg.pg_ctl(), &dir)
                .arg("status")
                .arg("-D")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
    }

    fn pg_ready(&self, pg: &PgTools) -> bool {
        pg.is_ready(self.settings.pg_port, &self.layout.pg_dir())
            .unwrap_or(false)
    }

    /// The postmaster's pid and port, from postmaster.pid (lines 1 and 4).
    fn postmaster(&self) -> (Option<u32>, Option<u16>) {
        let text = std::fs::read_to_string(self.layout.pg_dir().join("postmaster.pid"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        (
            lines.first().and_then(|l| l.trim().parse().ok()),
            lines.get(3).and_then(|l| l.trim().parse().ok()),
        )
    }

    fn record_pg_pid(&self) -> anyhow::Result<()> {
        if let (Some(pid), _) = self.postmaster() {
            record_pid(&self.layout, "postgresql", pid)?;
        }
        Ok(())
    }

    fn start_pg(&mut self, pg: &PgTools, started: &Started) -> anyhow::Result<()> {
        let dir = self.layout.pg_dir();
        if self.pg_running(pg) {
            self.record_pg_pid()?;
            // The port it really listens on, whatever was asked for now.
            if let (_, Some(port)) = self.postmaster() {
                self.settings.pg_port = port;
            }
            println!(
                "PostgreSQL of this stack is already running on port {}: using it",
                self.settings.pg_port
            );
            return Ok(());
        }
        let port = self.settings.pg_port;
        if port_listening(port) {
            return Err(port_taken(port, "PostgreSQL", "STACK_PG_PORT"));
        }
        let owner = pg.run_as();
        if owner.is_some() {
            let enters = pg
                .command(Path::new("test"), Path::new("/"))
                .arg("-x")
                .arg(&self.layout.dir)
                .status()
                .is_ok_and(|status| status.success());
            if !enters {
                bail!(
                    "the postgres user cannot enter {}; make it and its parents traversable \
                     (chmod o+x) or choose another STACK_DIR",
                    self.layout.dir.display()
                );
            }
        }
        if !dir.join("PG_VERSION").is_file() {
            let not_empty = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            if not_empty {
                bail!(
                    "{} is not empty but holds no PostgreSQL cluster; remove it and start again",
                    dir.display()
                );
            }
            step(&format!(
                "creating a PostgreSQL cluster in {}",
                dir.display()
            ));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            }
            let log = self.layout.log("initdb");
            let file = std::fs::File::create(&log)?;
            let status = pg
                .command(pg.initdb(), &dir)
                .arg("-D")
                .arg(&dir)
                .args(PgTools::INITDB_ARGS)
                .stdout(file.try_clone()?)
                .stderr(file)
                .status()
                .with_context(|| format!("running {}", pg.initdb().display()))?;
            if !status.success() {
                return Err(died("initdb", "failed", &log));
            }
        }
        let log = self.layout.log("postgresql");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;
        }
        step(&format!("starting PostgreSQL on 127.0.0.1:{port}"));
        let options = PgTools::server_options(port, &dir, "-c max_connections=200");
        let status = started.launch("postgresql", || {
            pg.command(pg.pg_ctl(), &dir)
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&dir)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(options)
                .stdout(Stdio::null())
                .status()
                .with_context(|| format!("running {}", pg.pg_ctl().display()))
        })?;
        if !status.success() {
            return Err(died("postgresql", "did not start", &log));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.pg_ready(pg) {
            if Instant::now() >= deadline {
                return Err(died("postgresql", "does not accept connections", &log));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.record_pg_pid()
    }

    // --- NATS ------------------------------------------------------------------------------

    fn start_nats(&mut self, started: &Started) -> anyhow::Result<()> {
        let port = self.settings.nats_port;
        if live_pid(&self.layout, "nats-server").is_some() {
            println!("nats-server of this stack is already running on port {port}");
            self.settings.nats_auth = nats_info(port).is_some_and(|info| info.auth_required);
            if self.settings.nats_auth {
                self.check_nats_passwords()?;
            }
            return Ok(());
        }
        forget_pid(&self.layout, "nats-server");
        self.settings.nats_external = false;
        if port_listening(port) {
            let owner = port_owner(port).unwrap_or_else(|| "another process".to_owned());
            let pick = "Pick another port for this stack's own nats-server, e.g.: \
                        STACK_NATS_PORT=4223 scripts/stack start";
            match nats_info(port) {
                Some(info) if info.auth_required => bail!(
                    "port {port} has a NATS server that asks for a user ({owner}); this stack \
                     does not know its users.\n       {pick}"
                ),
                Some(info) if info.jetstream => {
                    self.settings.nats_external = true;
                    self.settings.nats_auth = false;
                    println!(
                        "Port {port} already has a NATS server with JetStream ({owner}): using \
                         it, not starting one."
                    );
                    println!(
                        "    The ORDERS stream and its consumers are created there; it is not \
                         stopped by 'scripts/stack stop'."
                    );
                    println!(
                        "    To run a nats-server of this stack instead: STACK_NATS_PORT=4223 \
                         scripts/stack start"
                    );
                    if let Some(max) = info.max_payload.filter(|max| *max < 2_097_152) {
                        println!(
                            "    Note: its max_payload is {max} bytes (js.conf has 2MB): events \
                             near 1 MiB will not fit."
                        );
                    }
                    return Ok(());
                }
                Some(_) => bail!(
                    "port {port} has a NATS server without JetStream ({owner}); the pipeline \
                     needs JetStream.\n       {pick}"
                ),
                None => {
                    return Err(port_taken(
                        port,
                        "nats-server (what listens there does not answer like a NATS server)",
                        "STACK_NATS_PORT",
                    ));
                }
            }
        }
        let http_port = self.settings.nats_http_port;
        if port_listening(http_port) {
            return Err(port_taken(
                http_port,
                "NATS monitoring",
                "STACK_NATS_HTTP_PORT",
            ));
        }
        let nats_dir = self.layout.nats_dir();
        std::fs::create_dir_all(&nats_dir)?;
        // js.conf's store is relative to where nats-server starts, and -sd cannot be combined
        // with store_dir: a copy names this stack's folder.
        let mut config = js_conf(&nats_dir);
        let mut env = Vec::new();
        let users = if self.layout.nats_auth {
            // nats-server reads one file; the passwords stay out of it, in its environment.
            self.settings.nats_auth = true;
            self.ensure_nats_passwords()?;
            config.push_str(NATS_AUTH_CONF);
            env = self.nats_passwords()?;
            format!(
                "a user per service, passwords in {}",
                self.layout.passwords_file().display()
            )
        } else {
            self.settings.nats_auth = false;
            "without users".to_owned()
        };
        let config_file = self.layout.dir.join(if self.settings.nats_auth {
            "nats.conf"
        } else {
            "js.conf"
        });
        std::fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        step(&format!(
            "starting nats-server on 127.0.0.1:{port} (monitoring {http_port}, store {}, {users})",
            nats_dir.display()
        ));
        let log = self.layout.log("nats-server");
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new(testkit::host::find_nats_server()?);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
            .arg("-c")
            .arg(&config_file)
            .args(["-p", &port.to_string(), "-m", &http_port.to_string()])
            .envs(env)
            .current_dir(&self.layout.dir);
        let child = started.launch("nats-server", || {
            let child = testkit::host::spawn_logged(command, &log)?;
            record_pid(&self.layout, "nats-server", child.id())?;
            Ok(child)
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut child = Some(child);
        testkit::host::wait_ready(&mut child, &log, 0, port, deadline, "nats-server")
            .and_then(|()| {
                services::wait_ready(
                    "nats-server",
                    Ready::Http(http_port, "/healthz?js-enabled-only=true"),
                    deadline.saturating_duration_since(Instant::now()),
                    &log,
                    || true,
                )
            })
            .map_err(|error| {
                died(
                    "nats-server",
                    &format!("did not become healthy ({error:#})"),
                    &log,
                )
            })
    }

    fn password_variable(user: &str) -> String {
        format!("NATS_{}_PASSWORD", user.to_uppercase())
    }

    /// A random password per user of nats-auth.conf, made once and kept (mode 600).
    fn ensure_nats_passwords(&self) -> anyhow::Result<()> {
        let file = self.layout.passwords_file();
        if !file.exists() {
            let mut text = String::new();
            let mut random = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
            for user in NATS_USERS {
                let mut bytes = [0u8; 24];
                random.read_exact(&mut bytes)?;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                // Starting with a letter: nats-server reads the value as configuration, and would
                // take one starting with a digit for a number.
                text.push_str(&format!("{}=p{hex}\n", Self::password_variable(user)));
            }
            let new = file.with_extension("env.new");
            let _ = std::fs::remove_file(&new);
            let mut out = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&new)
                .with_context(|| format!("creating {}", new.display()))?;
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            std::fs::rename(&new, &file)?;
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        self.check_nats_passwords()
    }

    fn nats_passwords(&self) -> anyhow::Result<Vec<(String, String)>> {
        let file = self.layout.passwords_file();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    fn check_nats_passwords(&self) -> anyhow::Result<()> {
        for user in NATS_USERS {
            self.nats_password(user)?;
        }
        Ok(())
    }

    fn nats_password(&self, user: &str) -> anyhow::Result<String> {
        let variable = Self::password_variable(user);
        let file = self.layout.passwords_file();
        self.nats_passwords()
            .ok()
            .and_then(|all| {
                all.into_iter()
                    .find(|(k, v)| *k == variable && !v.is_empty())
            })
            .map(|(_, v)| v)
            .with_context(|| {
                format!(
                    "{} has no password for the NATS user {user}; stop the stack (scripts/stack \
                     stop), remove the file and start again",
                    file.display()
                )
            })
    }

    // --- traces ----------------------------------------------------------------------------

    fn start_zipkin(&mut self, started: &Started) -> anyhow::Result<()> {
        if let Some(endpoint) = std::env::var_os("ZIPKIN_ENDPOINT") {
            self.settings.zipkin = Zipkin::Caller;
            let endpoint = endpoint.to_string_lossy();
            let shown = if endpoint.is_empty() {
                "empty: span export off"
            } else {
                &endpoint
            };
            println!("ZIPKIN_ENDPOINT is set ({shown}): the services export there; no tracestore");
            return Ok(());
        }
        let port = self.settings.zipkin_port;
        self.settings.zipkin = Zipkin::Ours;
        if self.live("tracestore").is_some() {
            println!("tracestore of this stack is already running on port {port}");
            return Ok(());
        }
        forget_pid(&self.layout, "tracestore");
        if port_listening(port) {
            if http_ok(port, "/health") {
                self.settings.zipkin = Zipkin::External;
                let owner = port_owner(port).unwrap_or_else(|| "another process".to_owned());
                println!(
                    "Port {port} already has a Zipkin ({owner}): the services send their spans \
                     there."
                );
                println!(
                    "    It is not stopped by 'scripts/stack stop'. For this stack's own \
                     tracestore instead: STACK_ZIPKIN_PORT=9412 scripts/stack start"
                );
                return Ok(());
            }
            return Err(port_taken(
                port,
                "tracestore (what listens there does not answer Zipkin's /health)",
                "STACK_ZIPKIN_PORT",
            ));
        }
        step(&format!(
            "starting tracestore on 127.0.0.1:{port} (Zipkin's API and a trace viewer, in memory)"
        ));
        let log = self.layout.log("tracestore");
        let exe = std::env::current_exe().context("finding this executable")?;
        let pid = started.launch("tracestore", || {
            let child = services::spawn(
                &exe,
                &["trace-store", "--port", &port.to_string()],
                &[("NO_COLOR".to_owned(), "1".to_owned())],
                &[],
                &log,
                Detach::Yes,
            )?;
            record_pid(&self.layout, "tracestore", child.id())?;
            Ok(child.id())
        })?;
        services::wait_ready(
            "tracestore",
            Ready::Http(port, "/health"),
            Duration::from_secs(20),
            &log,
            || testkit::host::process_alive(pid),
        )
    }

    // --- stop ------------------------------------------------------------------------------

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
        println!("The stack is stopped.");
    }

    /// [`Stack::stop_process`], or PostgreSQL through pg_ctl.
    fn stop_one(&self, name: &str, pg: &PgTools) {
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
    fn stop_process(&self, name: &str, announce: bool) {
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

    // --- status, env, logs -----------------------------------------------------------------

    /// One line per process: name, pid, port, health, log. Whether all is up.
    pub fn status(&self) -> bool {
        let pg = PgTools::find().ok();
        let mut all_up = true;
        let mut row = |name: &str, pid: Option<u32>, port: Option<u16>, health: &str, log: &str| {
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            println!(
                "{:<17} {:<8} {:<6} {:<30} {}",
                name,
                dash(pid.map(|p| p.to_string())),
                dash(port.map(|p| p.to_string())),
                health,
                log
            );
            all_up &= health.starts_with("up") || health.starts_with("not used");
        };
        println!(
            "{:<17} {:<8} {:<6} {:<30} LOG",
            "NAME", "PID", "PORT", "HEALTH"
        );
        let log = |name: &str| self.layout.log(name).display().to_string();
        let s = &self.settings;

        let pg_up = pg
            .as_ref()
            .is_some_and(|pg| self.pg_running(pg) && self.pg_ready(pg));
        let pg_pid = std::fs::read_to_string(self.layout.pid_file("postgresql"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        let health = if pg_up {
            "up (accepts connections)"
        } else {
            "down"
        };
        row(
            "postgresql",
            pg_pid,
            Some(s.pg_port),
            health,
            &log("postgresql"),
        );

        if s.nats_external {
            let health = if nats_info(s.nats_port).is_some_and(|info| info.jetstream) {
                "up (external, not ours)"
            } else {
                "down (external)"
            };
            row("nats-server", None, Some(s.nats_port), health, "-");
        } else {
            let pid = self.live("nats-server");
            let health =
                if pid.is_some() && http_ok(s.nats_http_port, "/healthz?js-enabled-only=true") {
                    "up (/healthz, JetStream)"
                } else {
                    "down"
                };
            row(
                "nats-server",
                pid,
                Some(s.nats_port),
                health,
                &log("nats-server"),
            );
        }

        match s.zipkin {
            Zipkin::Caller => row(
                "tracestore",
                None,
                None,
                "not used (ZIPKIN_ENDPOINT set)",
                "-",
            ),
            Zipkin::External => {
                let health = if http_ok(s.zipkin_port, "/health") {
                    "up (external Zipkin, not ours)"
                } else {
                    "down (external Zipkin)"
                };
                row("zipkin", None, Some(s.zipkin_port), health, "-");
            }
            Zipkin::Ours => {
                let pid = self.live("tracestore");
                let health = if pid.is_some() && http_ok(s.zipkin_port, "/health") {
                    "up (/health 200)"
                } else {
                    "down"
                };
                row(
                    "tracestore",
                    pid,
                    Some(s.zipkin_port),
                    health,
                    &log("tracestore"),
                );
            }
        }

        for name in SERVICES {
            let pid = self.live(name);
            let port = match name {
                "eventstore" => Some(s.eventstore_port),
                "ordersvc" => Some(s.ordersvc_port),
                _ => None,
            };
            let health = match (pid, name) {
                (None, _) => "down",
                (Some(_), "eventstore") if port_accepts(s.eventstore_port) => "up (TCP)",
                (Some(_), "eventstore") => "down (no TCP)",
                (Some(_), "ordersvc") if http_ok(s.ordersvc_port, "/healthz") => {
                    "up (/healthz 200)"
                }
                (Some(_), "ordersvc") => "down (/healthz)",
                (Some(_), _) => "up (running)",
            };
            row(name, pid, port, health, &log(name));
        }
        all_up
    }

    /// What `start` prints at its end: the variables a client needs.
    fn print_env(&self) {
        let s = &self.settings;
        println!("  export NATS_URL=nats://127.0.0.1:{}", s.nats_port);
        if s.nats_auth {
            println!(
                "  export NATS_USER=orderctl NATS_PASSWORD=...   # eval \"$(scripts/stack env)\" \
                 sets both"
            );
        }
        println!(
            "  export EVENTSTORE_URL=http://127.0.0.1:{}",
            s.eventstore_port
        );
        println!("  export ORDERSVC_URL=http://127.0.0.1:{}", s.ordersvc_port);
        if let Some(url) = self.zipkin_url() {
            println!(
                "  export ZIPKIN_URL={url}   # traces: $ZIPKIN_URL/zipkin/, orderctl trace ORDER_ID"
            );
        }
    }

    /// The variables a client needs, as `export` lines (eval-able).
    pub fn env_lines(&self) -> Vec<String> {
        let s = &self.settings;
        let e = self.endpoints();
        let mut lines = vec![
            format!("export NATS_URL={}", e.nats_url),
            format!(
                "export EVENTSTORE_URL=http://127.0.0.1:{}",
                s.eventstore_port
            ),
            format!("export ORDERSVC_URL={}", e.api_url()),
        ];
        if let Some(url) = self.zipkin_url() {
            lines.push(format!("export ZIPKIN_URL={url}"));
        }
        if s.nats_auth && self.layout.passwords_file().is_file() {
            // The operator's user (orderctl dead-letters); the services' passwords stay in the file.
            if let Ok(password) = self.nats_password("orderctl") {
                lines.push("export NATS_USER=orderctl".to_owned());
                lines.push(format!("export NATS_PASSWORD='{password}'"));
            }
        }
        for (variable, user, database) in [
            ("BOOTSTRAP_DATABASE_URL", "root", "postgres"),
            ("EVENTSTORE_DATABASE_URL", "eventstore", "eventstoredb"),
            ("ORDERS_DATABASE_URL", "orders", "ordersdb"),
            ("PAYMENTS_DATABASE_URL", "payments", "paymentsdb"),
        ] {
            lines.push(format!(
                "export {variable}='{}'",
                e.role_url(user, database)
            ));
        }
        lines
    }

    /// `tail` of one log (50 lines) or of every log (20 lines each), following with `follow`;
    /// replaces this process.
    pub fn logs(&self, follow: bool, name: Option<&str>) -> anyhow::Error {
        let mut command = Command::new("tail");
        let files: Vec<PathBuf> = match name {
            Some(name) => {
                let log = self.layout.log(name);
                if !log.is_file() {
                    return anyhow::anyhow!(
                        "no log {} (names: postgresql nats-server tracestore bootstrapper {})",
                        log.display(),
                        SERVICES.join(" ")
                    );
                }
                command.args(["-n", "50"]);
                vec![log]
            }
            None => {
                let mut logs: Vec<PathBuf> = std::fs::read_dir(self.layout.log_dir())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
                    .collect();
                if logs.is_empty() {
                    return anyhow::anyhow!(
                        "no logs in {} (has the stack been started?)",
                        self.layout.log_dir().display()
                    );
                }
                logs.sort();
                command.args(["-n", "20"]);
                logs
            }
        };
        if follow {
            command.arg("-f");
        }
        let error = std::os::unix::process::CommandExt::exec(command.args(files));
        anyhow::anyhow!("running tail: {error}")
    }
}

/// js.conf with its `store_dir` set to `store`.
fn js_conf(store: &Path) -> String {
    let mut out = String::new();
    for line in JS_CONF.lines() {
        if line.trim_start().starts_with("store_dir:") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}store_dir: \"{}\"\n", store.display()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
