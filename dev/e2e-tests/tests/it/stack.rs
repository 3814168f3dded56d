//! `scripts/stack`, the single-machine dev stack, run as a user runs it: from a clean folder to a
//! served order, then stopped with nothing left running.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use e2e_tests::order_body;

/// Every process the stack starts, as `scripts/stack status` names them.
const PROCESSES: [&str; 9] = [
    "postgresql",
    "nats-server",
    "tracestore",
    "eventstore",
    "ordersvc",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
    "deadlinewatcher",
];

/// A stack in a temporary folder on free ports. Dropping it runs `scripts/stack stop`, so a failed
/// assertion leaves no process behind.
struct Stack {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    ports: Vec<(&'static str, u16)>,
    ordersvc_port: u16,
    stopped: bool,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/`, found from this test's executable (`target/<profile>/deps/it-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("the target directory above <profile>/deps")
        .to_path_buf()
}

impl Stack {
    fn new() -> Stack {
        let dir = tempfile::tempdir().expect("stack folder");
        // PostgreSQL runs as the `postgres` user when the tests run as root: it must enter the folder.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("stack folder mode");
        let ports = vec![
            ("STACK_PG_PORT", testkit::free_port()),
            ("STACK_NATS_PORT", testkit::free_port()),
            ("STACK_NATS_HTTP_PORT", testkit::free_port()),
            ("STACK_EVENTSTORE_PORT", testkit::free_port()),
            ("STACK_ORDERSVC_PORT", testkit::free_port()),
            // Nothing answers there: the stack starts its own tracestore.
            ("STACK_ZIPKIN_PORT", testkit::free_port()),
        ];
        let mut env: Vec<(String, String)> = ports
            .iter()
            .map(|(name, port)| ((*name).to_owned(), port.to_string()))
            .collect();
        env.extend(
            [
                ("STACK_DIR", dir.path().to_string_lossy().into_owned()),
                // The debug binaries the test suite already built (as the other end-to-end tests
                // use them): no cargo build inside a test, where it could wait on the build lock or
                // compile half-edited sources for minutes.
                ("STACK_PROFILE", "dev".to_owned()),
                ("STACK_BUILD", "0".to_owned()),
                (
                    "CARGO_TARGET_DIR",
                    target_dir().to_string_lossy().into_owned(),
                ),
                ("RUST_LOG", "info".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let ordersvc_port = ports[4].1;
        Stack {
            dir,
            env,
            ports,
            ordersvc_port,
            stopped: false,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo_root().join("scripts/stack"));
        command
            .args(args)
            // The caller's span export would keep the stack from starting its tracestore.
            .env_remove("ZIPKIN_ENDPOINT")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // The script works from any folder.
            .current_dir(self.dir.path());
        command
    }

    /// Runs `scripts/stack ARGS` off the async runtime; returns its output.
    async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        tokio::task::spawn_blocking(move || command.output().expect("scripts/stack runs"))
            .await
            .expect("scripts/stack finished")
    }

    /// The pid files the stack wrote: (process, pid).
    fn pids(&self) -> Vec<(String, u32)> {
        let mut pids: Vec<(String, u32)> = std::fs::read_dir(self.dir.path().join("pids"))
            .expect("pid folder")
            .map(|entry| {
                let path = entry.expect("pid file").path();
                let name = path
                    .file_stem()
                    .expect("pid file name")
                    .to_string_lossy()
                    .into_owned();
                let pid = std::fs::read_to_string(&path)
                    .expect("pid file")
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{} holds a pid", path.display()));
                (name, pid)
            })
            .collect();
        pids.sort();
        pids
    }

    fn logs(&self) -> String {
        self.command(&["logs"])
            .output()
            .map(|output| text(&output))
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- scripts/stack logs ---\n{}", self.logs());
        }
        if !self.stopped {
            let _ = self.command(&["stop"]).output();
        }
    }
}

/// The names of a process's threads (`/proc/<pid>/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn the_stack_starts_from_a_clean_folder_serves_an_order_and_stops_without_leftovers() {
    let mut stack = Stack::new();

    // Expected: from an empty folder, `start` creates the cluster, starts nats-server, bootstraps and
    // starts every service, and succeeds only once all of them are healthy.
    let started = stack.run(&["start"]).await;
    assert!(
        started.status.success(),
        "start failed:\n{}",
        text(&started)
    );

    // Expected: `status` lists every process as up, and succeeds.
    let status = stack.run(&["status"]).await;
    let report = text(&status);
    assert!(status.status.success(), "status failed:\n{report}");
    for process in PROCESSES {
        assert!(
            report
                .lines()
                .any(|line| line.starts_with(process) && line.contains(" up ")),
            "{process} is not up:\n{report}"
        );
    }
    let pids = stack.pids();
    let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
    let mut expected = PROCESSES.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "one pid file per process");

    // Expected: every service runs its tasks on its main thread alone (`SERVICE_THREADS` unset),
    // so none has a thread of a multi-threaded tokio runtime.
    for (name, pid) in &pids {
        if !e2e_tests::pipeline::SERVICES.contains(&name.as_str()) {
            continue;
        }
        let workers = thread_names(*pid)
            .into_iter()
            .filter(|thread| thread.starts_with("tokio-rt") || thread.starts_with("tokio-runtime"))
            .count();
        assert_eq!(workers, 0, "{name} runs tokio worker threads");
    }

    // Expected: the stack's own nats-server syncs every write where its version knows how (2.10
    // and later), and runs on the server's timer on 2.9, which refuses the setting.
    let nats_binary = testkit::host::find_nats_server().expect("the nats-server the stack runs");
    let version = testkit::host::NatsVersion::of(&nats_binary).expect("its version");
    let varz: Value = reqwest::get(format!("http://127.0.0.1:{}/varz", stack.ports[2].1))
        .await
        .expect("/varz answers")
        .json()
        .await
        .expect("/varz is JSON");
    assert_eq!(
        varz["jetstream"]["config"]["sync_always"].as_bool(),
        version.has_sync_always().then_some(true),
        "nats-server {version}: {}",
        varz["jetstream"]["config"]
    );

    // Expected: `start` again sees the running stack and changes nothing.
    let again = stack.run(&["start"]).await;
    assert!(again.status.success(), "second start:\n{}", text(&again));
    assert!(text(&again).contains("already running"), "{}", text(&again));
    assert_eq!(stack.pids(), pids, "no process was replaced");

    // Expected: an order POSTed to the stack's ordersvc, with a token `token` signed with the
    // stack's key, goes through payment and review; without one it is refused.
    let token = stack.run(&["token", "--customer", "stack-customer"]).await;
    assert!(token.status.success(), "token:\n{}", text(&token));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let base = format!("http://127.0.0.1:{}", stack.ordersvc_port);
    let anonymous = reqwest::Client::new()
        .post(format!("{base}/api/orders"))
        .json(&order_body("stack-customer", "12.50", 2))
        .send()
        .await
        .expect("POST answers");
    assert_eq!(anonymous.status().as_u16(), 401, "no token, no order");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a header value"),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .expect("HTTP client");
    let response = http
        .post(format!("{base}/api/orders"))
        .json(&order_body("stack-customer", "12.50", 2))
        .send()
        .await
        .expect("POST answers");
    assert_eq!(response.status().as_u16(), 201, "order accepted");
    let created: Value = response.json().await.expect("JSON");
    let order_id = created["order_id"].as_str().expect("order_id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http
            .get(format!("{base}/api/orders/{order_id}"))
            .send()
            .await
            .expect("GET answers");
        let order: Value = if answer.status().is_success() {
            answer.json().await.expect("JSON")
        } else {
            Value::Null
        };
        if order["status"] == "Approved" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} never became Approved; last {order}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Expected: `stop` ends every process of the stack, closes every port and removes the pid files.
    let stopped = stack.run(&["stop"]).await;
    assert!(stopped.status.success(), "stop failed:\n{}", text(&stopped));
    stack.stopped = true;
    let deadline = Instant::now() + Duration::from_secs(5);
    for (name, pid) in &pids {
        // A process that has just exited stays in /proc until its parent (init) reaps it.
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) is still running after stop:\n{}",
            text(&stopped)
        );
    }
    for (variable, port) in &stack.ports {
        assert!(
            TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} ({variable}) still accepts connections after stop"
        );
    }
    assert!(
        stack.pids().is_empty(),
        "pid files are left: {:?}",
        stack.pids()
    );

    // Expected: stopping a stopped stack is harmless.
    let twice = stack.run(&["stop"]).await;
    assert!(twice.status.success(), "second stop:\n{}", text(&twice));
}
