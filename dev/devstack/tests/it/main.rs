//! The dev stack as a user runs it: the devstack binary in a temporary STACK_DIR on free ports,
//! with the workspace's debug binaries (build them first: cargo build --bins).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use devstack::probe::port_listening;
use testkit::host::process_alive;

/// A stack's folder and ports; `stop`ped on drop, so a failing test leaves nothing running.
struct TestStack {
    dir: tempfile::TempDir,
    ports: BTreeMap<&'static str, u16>,
    /// Other variables of this stack (`STACK_DB=ha`).
    env: Vec<(&'static str, String)>,
}

impl TestStack {
    /// Free ports for everything; NATS on `nats_port` (a server of the test's, or a free port).
    fn new(nats_port: Option<u16>) -> TestStack {
        let dir = tempfile::Builder::new()
            .prefix("devstack-it-")
            .tempdir_in("/tmp")
            .expect("temporary STACK_DIR");
        // PostgreSQL runs as the postgres user when the tests run as root: it must enter.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod STACK_DIR");
        let mut ports = BTreeMap::new();
        for variable in [
            "STACK_PG_PORT",
            "STACK_NATS_HTTP_PORT",
            "STACK_EVENTSTORE_PORT",
            "STACK_ORDERSVC_PORT",
            "STACK_ZIPKIN_PORT",
        ] {
            ports.insert(variable, testkit::free_port());
        }
        ports.insert(
            "STACK_NATS_PORT",
            nats_port.unwrap_or_else(testkit::free_port),
        );
        TestStack {
            dir,
            ports,
            env: Vec::new(),
        }
    }

    /// As [`TestStack::new`] with `STACK_DB=ha` and a base of twelve free ports in a row.
    fn ha() -> TestStack {
        let mut stack = TestStack::new(None);
        let taken: Vec<u16> = stack.ports.values().copied().collect();
        let base = loop {
            let base = testkit::free_port();
            let block = base..base.saturating_add(12);
            let free = block.clone().all(|port| {
                !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            });
            if free && base < 65000 {
                break base;
            }
        };
        stack.ports.insert("STACK_HA_PORT_BASE", base);
        stack.env.push(("STACK_DB", "ha".to_owned()));
        stack
    }

    fn port(&self, variable: &str) -> u16 {
        self.ports[variable]
    }

    fn devstack(&self, args: &[&str]) -> Output {
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_devstack"));
        let mut command = Command::new(&exe);
        for variable in [
            "ZIPKIN_ENDPOINT",
            "STACK_NATS_AUTH",
            "STACK_BIN_DIR",
            "NATS_URL",
        ] {
            command.env_remove(variable);
        }
        command
            .args(args)
            .env("STACK_DIR", self.dir.path())
            .env("STACK_STOP_TIMEOUT", "10")
            .env_remove("STACK_DB")
            .env_remove("STACK_HA_PORT_BASE")
            .envs(self.ports.iter().map(|(k, v)| (k, v.to_string())))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command.output().expect("devstack runs")
    }

    fn pids(&self) -> Vec<(String, u32)> {
        std::fs::read_dir(self.dir.path().join("pids"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.path().file_stem()?.to_string_lossy().into_owned();
                let pid = std::fs::read_to_string(entry.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((name, pid))
            })
            .collect()
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Stops the stack and checks that nothing it started still runs or listens.
    fn stop_and_check(&self, pids: &[(String, u32)], own_nats: bool) {
        let stop = self.devstack(&["stop"]);
        assert!(stop.status.success(), "stop: {}", text(&stop));
        for (name, pid) in pids {
            assert!(
                !process_alive(*pid),
                "{name} (pid {pid}) still runs after stop"
            );
        }
        for (variable, port) in &self.ports {
            if *variable == "STACK_NATS_PORT" && !own_nats {
                continue;
            }
            assert!(
                !port_listening(*port),
                "{variable} {port} still listens after stop"
            );
        }
        assert!(self.pids().is_empty(), "pid files left: {:?}", self.pids());
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        let _ = self.devstack(&["stop"]);
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn all_logs(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let log = testkit::host::read_lossy(&entry.path());
            format!(
                "--- {}\n{}",
                entry.path().display(),
                testkit::host::tail(&log, 20)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An order posted through the stack's API is accepted and reaches a final status.
fn post_order(stack: &TestStack) {
    let api = format!("http://127.0.0.1:{}", stack.port("STACK_ORDERSVC_PORT"));
    // A token of customer c1, signed with the key the stack made at its start.
    let token = stack.devstack(&["token", "--customer", "c1"]);
    assert!(token.status.success(), "token: {}", text(&token));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a header value"),
    );
    let http = reqwest::blocking::Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client");
    let anonymous = reqwest::blocking::Client::new()
        .get(format!("{api}/api/orders?customer_id=c1"))
        .send()
        .expect("GET answers");
    assert_eq!(anonymous.status().as_u16(), 401, "no token, no answer");
    let answer = http
        .post(format!("{api}/api/orders"))
        .json(&serde_json::json!({
            "customer_id": "c1",
            "restaurant_id": "r1",
            "order_items": [{"code": "p1", "name": "Pizza", "unit_price": "12.50", "quantity": 2}]
        }))
        .send()
        .expect("POST answers");
    assert_eq!(answer.status().as_u16(), 201, "order accepted");
    let order: serde_json::Value = answer.json().expect("JSON");
    let id = order["order_id"].as_str().expect("order_id").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let order: serde_json::Value = http
            .get(format!("{api}/api/orders/{id}"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default();
        if order["status"] == "Approved" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "order {id} not Approved: {order}\n{}",
            all_logs(&stack.log_dir())
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn start(stack: &TestStack) -> String {
    let start = stack.devstack(&["start"]);
    let output = text(&start);
    assert!(
        start.status.success(),
        "start failed: {output}\n{}",
        all_logs(&stack.log_dir())
    );
    output
}

#[test]
fn a_stack_uses_a_nats_with_jetstream_already_on_its_port_and_leaves_it_running() {
    let nats = testkit::NatsServer::start().expect("nats-server");
    let stack = TestStack::new(Some(nats.port()));
    let output = start(&stack);
    assert!(
        output.contains(&format!(
            "Port {} already has a NATS server with JetStream",
            nats.port()
        )),
        "{output}"
    );
    let status = stack.devstack(&["status"]);
    assert!(status.status.success(), "status: {}", text(&status));
    assert!(
        text(&status).contains("up (external, not ours)"),
        "{}",
        text(&status)
    );
    post_order(&stack);

    // A second start changes nothing.
    let pids = stack.pids();
    let again = start(&stack);
    assert!(again.contains("The stack is already running"), "{again}");
    assert_eq!(stack.pids(), pids);

    stack.stop_and_check(&pids, false);
    assert!(
        nats.is_running(),
        "the NATS the stack found is left running"
    );
}

#[test]
fn a_stack_runs_its_own_nats_server_with_a_user_per_service() {
    let stack = TestStack::new(None);
    let output = start(&stack);
    assert!(output.contains("a user per service"), "{output}");
    let passwords = stack.dir.path().join("nats-passwords.env");
    let mode = std::fs::metadata(&passwords)
        .expect("passwords")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the passwords are the owner's alone");

    let env = text(&stack.devstack(&["env"]));
    assert!(env.contains("export NATS_USER=orderctl"), "{env}");
    assert!(
        env.contains(&format!(
            "export ORDERSVC_URL=http://127.0.0.1:{}",
            stack.port("STACK_ORDERSVC_PORT")
        )),
        "{env}"
    );
    let status = stack.devstack(&["status"]);
    assert!(status.status.success(), "status: {}", text(&status));
    post_order(&stack);

    let pids = stack.pids();
    let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
    for name in [
        "postgresql",
        "nats-server",
        "tracestore",
        "eventstore",
        "deadlinewatcher",
    ] {
        assert!(names.contains(&name), "{name} has a pid file: {names:?}");
    }
    stack.stop_and_check(&pids, true);
    let status = stack.devstack(&["status"]);
    assert!(
        !status.status.success(),
        "status says down: {}",
        text(&status)
    );
}

#[test]
fn a_start_on_a_busy_port_names_it_and_leaves_nothing_running() {
    let stack = TestStack::new(None);
    let me = std::process::id();

    // A service's port: refused before anything starts.
    let busy = std::net::TcpListener::bind(("127.0.0.1", stack.port("STACK_ORDERSVC_PORT")))
        .expect("bind");
    let start = stack.devstack(&["start"]);
    let output = text(&start);
    assert!(!start.status.success(), "{output}");
    assert!(
        output.contains(&format!(
            "port {}, wanted for ordersvc, is already in use by",
            stack.port("STACK_ORDERSVC_PORT")
        )) && output.contains(&format!("(pid {me})"))
            && output.contains("STACK_ORDERSVC_PORT="),
        "{output}"
    );
    assert!(
        stack.pids().is_empty(),
        "nothing started: {:?}",
        stack.pids()
    );
    drop(busy);

    // The trace store's port, taken by something that is not a Zipkin: found after PostgreSQL
    // and nats-server started, which are stopped again.
    let zipkin = stack.port("STACK_ZIPKIN_PORT");
    let _busy = std::net::TcpListener::bind(("127.0.0.1", zipkin)).expect("bind");
    let start = stack.devstack(&["start"]);
    let output = text(&start);
    assert!(!start.status.success(), "{output}");
    assert!(
        output.contains(&format!("port {zipkin}, wanted for tracestore")),
        "{output}"
    );
    assert!(output.contains("STACK_ZIPKIN_PORT="), "{output}");
    assert!(
        output.contains("stopping what this run started: postgresql nats-server"),
        "{output}"
    );
    assert!(
        stack.pids().is_empty(),
        "pid files left: {:?}",
        stack.pids()
    );
    for variable in ["STACK_PG_PORT", "STACK_NATS_PORT", "STACK_NATS_HTTP_PORT"] {
        assert!(
            !port_listening(stack.port(variable)),
            "{variable} still listens after a failed start"
        );
    }
}

#[test]
fn a_start_interrupted_by_ctrl_c_stops_what_it_started() {
    let stack = TestStack::new(None);
    let out = stack.dir.path().join("start.out");
    let file = std::fs::File::create(&out).expect("output file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_devstack"));
    command
        .arg("start")
        .env_remove("ZIPKIN_ENDPOINT")
        .env("STACK_DIR", stack.dir.path())
        .envs(stack.ports.iter().map(|(k, v)| (k, v.to_string())))
        .stdout(file.try_clone().expect("output file"))
        .stderr(file);
    let mut start = command.spawn().expect("devstack runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !testkit::host::read_lossy(&out).contains("starting eventstore") {
        assert!(
            std::time::Instant::now() < deadline,
            "start never got to the services: {}",
            testkit::host::read_lossy(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pids = stack.pids();
    let signalled = Command::new("kill")
        .args(["-INT", &start.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let status = start.wait().expect("devstack exits");
    let output = testkit::host::read_lossy(&out);
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(
        output.contains("interrupted; stopping what this run started: postgresql nats-server"),
        "{output}"
    );
    for (name, pid) in &pids {
        assert!(
            !process_alive(*pid),
            "{name} (pid {pid}) still runs: {output}"
        );
    }
    assert!(
        stack.pids().is_empty(),
        "pid files left: {:?}",
        stack.pids()
    );
    for (variable, port) in &stack.ports {
        assert!(!port_listening(*port), "{variable} {port} still listens");
    }
}

/// The status line of `name` (`patroni-2 …`).
fn status_line(status: &str, name: &str) -> String {
    status
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_default()
        .to_owned()
}

/// Each HA node's postmaster, from its postmaster.pid.
fn postmasters(stack: &TestStack) -> Vec<u32> {
    (1..=3)
        .filter_map(|n| {
            let file = stack
                .dir
                .path()
                .join(format!("ha/pg{n}/data/postmaster.pid"));
            std::fs::read_to_string(file)
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

#[test]
fn an_ha_stack_serves_orders_brings_a_killed_leader_back_and_stops_without_leftovers() {
    let stack = TestStack::ha();
    start(&stack);

    let env = text(&stack.devstack(&["env"]));
    assert!(
        env.contains("export PATRONI_URLS=http://127.0.0.1:"),
        "{env}"
    );
    assert!(
        env.contains(&format!(
            "export PGURL='postgresql://root@127.0.0.1:{}/postgres?sslmode=disable'",
            stack.port("STACK_PG_PORT")
        )),
        "{env}"
    );
    let status = stack.devstack(&["status"]);
    let status_text = text(&status);
    assert!(status.status.success(), "status: {status_text}");
    assert!(
        status_text.contains("up (leader, timeline"),
        "{status_text}"
    );
    assert!(status_text.contains("up (sync standby"), "{status_text}");
    assert!(status_text.contains("up (read-write → pg"), "{status_text}");
    post_order(&stack);

    // Crash the leader's node: Patroni and PostgreSQL, SIGKILL.
    let leader = (1..=3)
        .map(|n| format!("patroni-{n}"))
        .find(|name| status_line(&status_text, name).contains("up (leader"))
        .expect("a leader in status");
    let patroni = stack
        .pids()
        .into_iter()
        .find(|(name, _)| *name == leader)
        .map(|(_, pid)| pid)
        .expect("the leader's pid file");
    let n = &leader["patroni-".len()..];
    let postmaster: u32 = std::fs::read_to_string(
        stack
            .dir
            .path()
            .join(format!("ha/pg{n}/data/postmaster.pid")),
    )
    .expect("postmaster.pid")
    .lines()
    .next()
    .and_then(|line| line.trim().parse().ok())
    .expect("the postmaster's pid");
    let killed = Command::new("kill")
        .args(["-KILL", &patroni.to_string(), &postmaster.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    // Patroni replaces the leader once its key expires (ttl 20 s); a node started again before
    // that would simply take its own leadership back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = text(&stack.devstack(&["status"]));
        let new_leader = (1..=3)
            .map(|n| format!("patroni-{n}"))
            .any(|name| name != leader && status_line(&status, &name).contains("up (leader"));
        if new_leader {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new leader within 60 s of killing {leader}: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // A second start brings it back; it rejoins as a replica of the new leader.
    let again = start(&stack);
    assert!(again.contains(&leader), "{again}");
    let status = stack.devstack(&["status"]);
    let status_text = text(&status);
    assert!(status.status.success(), "status: {status_text}");
    let line = status_line(&status_text, &leader);
    assert!(
        line.contains("up (replica") || line.contains("up (sync standby"),
        "{line}\n{status_text}"
    );
    post_order(&stack);

    // A third start on a whole stack changes nothing.
    let pids = stack.pids();
    let third = start(&stack);
    assert!(third.contains("The stack is already running"), "{third}");
    assert_eq!(stack.pids(), pids);

    let postmasters = postmasters(&stack);
    assert_eq!(postmasters.len(), 3, "three postmasters run");
    stack.stop_and_check(&pids, true);
    for pid in postmasters {
        assert!(
            !process_alive(pid),
            "postmaster {pid} still runs after stop"
        );
    }
}

#[test]
fn a_postgresql_folder_of_the_other_profile_is_refused_and_kept() {
    let stack = TestStack::ha();
    let version = stack.dir.path().join("pg/PG_VERSION");
    std::fs::create_dir_all(stack.dir.path().join("pg")).expect("pg folder");
    std::fs::write(&version, "15\n").expect("PG_VERSION");
    let start = stack.devstack(&["start"]);
    let output = text(&start);
    assert!(!start.status.success(), "{output}");
    assert!(
        output.contains("holds the single-node PostgreSQL of this stack (STACK_DB=single)"),
        "{output}"
    );
    assert!(stack.pids().is_empty(), "nothing runs: {:?}", stack.pids());
    assert_eq!(std::fs::read_to_string(&version).expect("kept"), "15\n");
    assert!(!stack.dir.path().join("ha").exists(), "no HA folder made");

    let single = TestStack::new(None);
    let data = single.dir.path().join("ha/pg2/data");
    std::fs::create_dir_all(&data).expect("ha folder");
    std::fs::write(data.join("PG_VERSION"), "15\n").expect("PG_VERSION");
    let start = single.devstack(&["start"]);
    let output = text(&start);
    assert!(!start.status.success(), "{output}");
    assert!(
        output.contains("holds the HA PostgreSQL cluster of this stack (STACK_DB=ha)"),
        "{output}"
    );
    assert!(
        !single.dir.path().join("pg/PG_VERSION").exists(),
        "no single cluster made"
    );
}
