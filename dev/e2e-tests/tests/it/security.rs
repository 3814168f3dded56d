//! NATS security: every service on a user of its own with only the subjects it needs
//! (`nats-auth.conf`), credentials from the environment and never shown, and TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use pipeline_runtime::nats::NatsArgs;
use testkit::NatsServer;
use testkit::tls::Certificates;

// The users of nats-auth.conf, as the dev stack gives them passwords.
use devstack::stack::NATS_USERS as USERS;
use e2e_tests::pipeline::binary;
use e2e_tests::{Options, Pipeline};

/// Services without a NATS user: they need no subject (nats-auth.conf says why), so they get no
/// credentials and never connect.
const NO_NATS: [&str; 1] = ["deadlinewatcher"];

/// The workers, each with its durable consumer of the same name.
const WORKERS: [&str; 3] = ["paymentworker", "reviewworker", "querymodelworker"];

/// The repository's authorization block, as shipped.
const AUTH_CONFIG: &str = include_str!("../../../../nats-auth.conf");

/// A random password for each user, handed to nats-server as `$NATS_<USER>_PASSWORD`.
struct Passwords(Vec<(&'static str, String)>);

impl Passwords {
    fn new() -> Passwords {
        Passwords(
            USERS
                .iter()
                // nats-server parses a variable's value as configuration: one starting with a
                // digit would be read as a number (and refused), so it starts with a letter.
                .map(|user| (*user, format!("p{}", uuid::Uuid::new_v4().simple())))
                .collect(),
        )
    }

    fn of(&self, user: &str) -> &str {
        self.0
            .iter()
            .find(|(name, _)| *name == user)
            .map(|(_, password)| password.as_str())
            .unwrap_or_else(|| panic!("no user {user}"))
    }

    /// `NATS_<USER>_PASSWORD=…` for each user: the server's environment.
    fn server_env(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(user, password)| {
                (
                    format!("NATS_{}_PASSWORD", user.to_uppercase()),
                    password.clone(),
                )
            })
            .collect()
    }

    /// `NATS_USER` and `NATS_PASSWORD` of `user`: a client's environment.
    fn client_env(&self, user: &str) -> [(String, String); 2] {
        [
            ("NATS_USER".to_owned(), user.to_owned()),
            ("NATS_PASSWORD".to_owned(), self.of(user).to_owned()),
        ]
    }

    /// Panics naming the password and the place if `text` holds any of them.
    fn assert_absent(&self, text: &str, place: &str) {
        for (user, password) in &self.0 {
            assert!(
                !text.contains(password.as_str()),
                "the password of {user} appears in {place}"
            );
        }
    }
}

/// A nats-server with JetStream and the repository's `nats-auth.conf`.
fn start_nats_with_auth(passwords: &Passwords) -> NatsServer {
    let env = passwords.server_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    NatsServer::start_with_config_and_env(AUTH_CONFIG, &env)
        .expect("nats-server starts with nats-auth.conf")
}

/// A JetStream client of `user`, connected through the project's own NATS code.
async fn jetstream_as(args: NatsArgs) -> jetstream::Context {
    let client = pipeline_runtime::nats::connect(&args, "security-test", Duration::from_secs(10))
        .await
        .unwrap_or_else(|err| panic!("{} connects: {err:#}", args.describe()));
    jetstream::new(client)
}

/// Runs `command` to its end, at most `limit` (then kills it); returns its exit code (`None` when it
/// had to be killed) and everything it wrote.
fn run_bounded(mut command: Command, limit: Duration) -> (Option<i32>, String) {
    let output = tempfile::NamedTempFile::new().expect("output file");
    let file = output.reopen().expect("output file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("output file"))
        .stderr(file)
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(output.path()).unwrap_or_default();
    (status.and_then(|status| status.code()), text)
}

/// [`run_bounded`] off the async runtime.
async fn run(command: Command, limit: Duration) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || run_bounded(command, limit))
        .await
        .expect("the child was awaited")
}

/// A binary of the workspace with nothing of the caller's environment but `env`.
fn command(name: &str, env: &[(String, String)]) -> Command {
    let mut command = Command::new(binary(name));
    command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// Every log file the pipeline's processes wrote, with its name.
fn all_logs(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_dir(dir)
        .expect("log folder")
        .map(|entry| entry.expect("log file").path())
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            (path.display().to_string(), text)
        })
        .collect()
}

/// Waits until ordersvc is ready (database and event store) and every worker's consumer has a pull
/// waiting: `Pipeline::wait_ready` connects without a user, which this server refuses.
async fn wait_ready(pipeline: &Pipeline, js: &jetstream::Context) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let check = |what: &str| {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; logs in {}",
            pipeline.log_dir().display()
        );
    };
    loop {
        let ready = pipeline
            .http
            .get(format!("{}/readyz", pipeline.base_url()))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        check("ordersvc /readyz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for durable in WORKERS {
        loop {
            let stream = js.get_stream("ORDERS").await.expect("stream ORDERS");
            let consumer: Result<jetstream::consumer::PullConsumer, _> =
                stream.get_consumer(durable).await;
            if let Ok(mut consumer) = consumer
                && consumer.info().await.is_ok_and(|info| info.num_waiting > 0)
            {
                break;
            }
            check(&format!("{durable} to pull"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn every_service_on_its_own_user_runs_the_saga_and_no_log_holds_a_password() {
    let passwords = Passwords::new();
    let nats = start_nats_with_auth(&passwords);
    let nats_url = nats.url();
    // Every process logs at debug level: the most a log can say.
    let mut pipeline = Pipeline::start_with(Options {
        nats: Some(nats),
        env: vec![("RUST_LOG".to_owned(), "debug".to_owned())],
        // The bootstrapper's password by flag: no other process gets it.
        bootstrap_args: vec![
            "--nats-user".to_owned(),
            "bootstrapper".to_owned(),
            "--nats-password".to_owned(),
            passwords.of("bootstrapper").to_owned(),
        ],
        no_services: true,
        ..Options::default()
    })
    .await
    .expect("the pipeline starts");
    for service in e2e_tests::pipeline::SERVICES {
        if NO_NATS.contains(&service) {
            pipeline.spawn(service);
            continue;
        }
        let env = passwords.client_env(service);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pipeline.spawn_with(service, &env);
    }
    let operator =
        NatsArgs::new(&nats_url).with_user("orderctl", passwords.of("orderctl").to_owned());
    let js = jetstream_as(operator).await;
    wait_ready(&pipeline, &js).await;

    // Expected: the saga runs as without authentication, every service on its own user.
    let approved = pipeline.place("sec-alice", "12.50", 2).await;
    let failed = pipeline.place("sec-bob", "600.00", 2).await;
    let rejected = pipeline.place("sec-carol", "300.00", 2).await;
    let order = pipeline.wait_final(&approved).await;
    assert_eq!(order["status"], "Approved", "{order}");
    let order = pipeline.wait_final(&failed).await;
    assert_eq!(order["status"], "PaymentFailed", "{order}");
    let order = pipeline.wait_final(&rejected).await;
    assert_eq!(order["status"], "Rejected", "{order}");
    assert_eq!(order["refunded"], true, "the refund went through: {order}");

    // Expected: deadlinewatcher, without a NATS user and on its read-only database role, sweeps
    // the read model (its debug log shows a sweep without error) and is refused nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = pipeline.log("deadlinewatcher", 0);
        assert!(
            !log.contains("permission denied"),
            "deadlinewatcher's role lacks a grant:\n{log}"
        );
        if log.contains("sweep") && log.contains("error: None") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deadlinewatcher never swept without an error:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Expected: each worker dead-letters a message it cannot decode to its own subject, and the
    // operator lists and replays them with orderctl. A worker judges only the subjects of the
    // types it handles: paymentworker `created`, reviewworker `paymentdebited`, querymodelworker
    // both.
    for subject in ["ORDERS.created", "ORDERS.paymentdebited"] {
        js.publish(subject, "not an event".into())
            .await
            .expect("the operator may publish to ORDERS")
            .await
            .expect("the stream takes it");
    }
    let mut operator_env = pipeline.env();
    operator_env.extend(passwords.client_env("orderctl"));
    operator_env.push(("RUST_LOG".to_owned(), "debug".to_owned()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let mut list = command("orderctl", &operator_env);
        list.args(["dead-letters", "list"]);
        let (code, output) = run(list, Duration::from_secs(20)).await;
        assert_eq!(code, Some(0), "orderctl dead-letters list: {output}");
        if WORKERS.iter().all(|worker| output.contains(worker)) {
            break output;
        }
        assert!(
            Instant::now() < deadline,
            "every worker dead-letters a poison message; orderctl lists:\n{output}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    passwords.assert_absent(&listed, "the output of orderctl dead-letters list");
    let mut replay = command("orderctl", &operator_env);
    replay.args([
        "dead-letters",
        "replay",
        "--all",
        "--worker",
        "reviewworker",
    ]);
    let (code, output) = run(replay, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "orderctl dead-letters replay: {output}");
    assert!(output.contains("1 dead letter(s) replayed"), "{output}");
    passwords.assert_absent(&output, "the output of orderctl dead-letters replay");

    // Expected: the bootstrapper, run again at debug level with its password in the environment,
    // succeeds and prints no password.
    let mut env = pipeline.env();
    env.extend(passwords.client_env("bootstrapper"));
    env.push(("RUST_LOG".to_owned(), "debug".to_owned()));
    let (code, output) = run(command("bootstrapper", &env), Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "the bootstrapper runs again: {output}");
    assert!(output.contains("unchanged"), "{output}");
    passwords.assert_absent(&output, "the bootstrapper's output");

    // Expected: no process log holds a password, and the server refused nothing: every subject a
    // service used is in its permissions (nats-server logs each violation).
    let logs = all_logs(pipeline.log_dir());
    let names: Vec<&str> = logs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(logs.len(), 6, "one log per service: {names:?}");
    for (name, text) in &logs {
        assert!(!text.is_empty(), "{name} logged something at debug level");
        passwords.assert_absent(text, name);
    }
    let server_log = pipeline.nats.log();
    passwords.assert_absent(&server_log, "the nats-server log");
    let refused: Vec<&str> = server_log
        .lines()
        .filter(|line| line.contains("Violation"))
        .collect();
    assert!(
        refused.is_empty(),
        "nats-server refused the pipeline something:\n{}",
        refused.join("\n")
    );
}

/// A client of `user` that collects the errors the server sends it (a refused publish or
/// subscription is reported that way, asynchronously).
struct Probe {
    client: async_nats::Client,
    errors: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Probe {
    async fn connect(url: &str, user: &str, password: &str) -> Probe {
        let (sender, errors) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            password.to_owned(),
        )
        .event_callback(move |event| {
            let sender = sender.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    let _ = sender.send(err.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("{user} connects: {err}"));
        Probe { client, errors }
    }

    /// Waits until the server reports a permissions violation naming `subject`.
    async fn refused(&mut self, what: &str, subject: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let error = tokio::time::timeout_at(deadline, self.errors.recv())
                .await
                .unwrap_or_else(|_| panic!("the server refuses {what} ({subject})"))
                .expect("the client is open");
            if error.contains("Permissions Violation") && error.contains(subject) {
                return;
            }
        }
    }

    /// No violation reported so far.
    fn nothing_refused(&mut self) {
        if let Ok(error) = self.errors.try_recv() {
            panic!("unexpected error from the server: {error}");
        }
    }
}

/// Messages in stream `name`.
async fn messages(js: &jetstream::Context, name: &str) -> u64 {
    js.get_stream(name)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}

#[tokio::test]
async fn a_user_cannot_do_what_it_must_not() {
    let passwords = Passwords::new();
    let nats = start_nats_with_auth(&passwords);
    let url = nats.url();

    let mut env = vec![("NATS_URL".to_owned(), url.clone())];
    env.extend(passwords.client_env("bootstrapper"));
    let mut bootstrap = command("bootstrapper", &env);
    bootstrap.arg("--skip-sql");
    let (code, output) = run(bootstrap, Duration::from_secs(30)).await;
    assert_eq!(
        code,
        Some(0),
        "the bootstrapper creates streams and consumers: {output}"
    );
    let operator = jetstream_as(
        NatsArgs::new(&url).with_user("orderctl", passwords.of("orderctl").to_owned()),
    )
    .await;

    // reviewworker: may look at its own consumer, nothing more.
    let mut review = Probe::connect(&url, "reviewworker", passwords.of("reviewworker")).await;
    let js = jetstream::new(review.client.clone());
    let stream = js
        .get_stream("ORDERS")
        .await
        .expect("reviewworker may look at ORDERS");
    let _own: jetstream::consumer::PullConsumer = stream
        .get_consumer("reviewworker")
        .await
        .expect("reviewworker may look at its own consumer");
    review.nothing_refused();

    // Expected: it cannot append an event by publishing to ORDERS (only the event store does).
    review
        .client
        .publish("ORDERS.created", "forged".into())
        .await
        .expect("the client sends it");
    review.refused("a forged event", "ORDERS.created").await;
    assert_eq!(
        messages(&operator, "ORDERS").await,
        0,
        "nothing reached ORDERS"
    );

    // Expected: it cannot read paymentworker's durable, nor look at it.
    for subject in [
        "$JS.API.CONSUMER.MSG.NEXT.ORDERS.paymentworker",
        "$JS.API.CONSUMER.INFO.ORDERS.paymentworker",
    ] {
        review
            .client
            .publish(subject, "".into())
            .await
            .expect("sent");
        review.refused("another worker's durable", subject).await;
    }

    // Expected: it cannot listen to the stream's subjects directly, nor to another worker's letters.
    let _snoop = review.client.subscribe("ORDERS.>").await.expect("sent");
    review.refused("a plain subscription", "ORDERS.>").await;
    review
        .client
        .publish("DEADLETTERS.paymentworker", "forged".into())
        .await
        .expect("sent");
    review
        .refused(
            "a letter in paymentworker's name",
            "DEADLETTERS.paymentworker",
        )
        .await;

    // Expected: the event store publishes events but cannot consume or change the stream.
    let mut store = Probe::connect(&url, "eventstore", passwords.of("eventstore")).await;
    store
        .client
        .publish("$JS.API.STREAM.DELETE.ORDERS", "".into())
        .await
        .expect("sent");
    store
        .refused("deleting the stream", "$JS.API.STREAM.DELETE.ORDERS")
        .await;
    store
        .client
        .publish(
            "$JS.API.CONSUMER.MSG.NEXT.ORDERS.querymodelworker",
            "1".into(),
        )
        .await
        .expect("sent");
    store
        .refused(
            "a pull by the event store",
            "$JS.API.CONSUMER.MSG.NEXT.ORDERS.querymodelworker",
        )
        .await;

    // Expected: ordersvc only listens to read-model notices: it can neither forge one nor publish
    // an event.
    let mut api = Probe::connect(&url, "ordersvc", passwords.of("ordersvc")).await;
    let _notices = api
        .client
        .subscribe("READMODEL.orders")
        .await
        .expect("sent");
    for subject in ["READMODEL.orders", "ORDERS.created"] {
        api.client
            .publish(subject, "forged".into())
            .await
            .expect("sent");
        api.refused("a publish by ordersvc", subject).await;
    }

    // Expected: the bootstrapper creates and updates, but cannot delete or purge.
    let mut admin = Probe::connect(&url, "bootstrapper", passwords.of("bootstrapper")).await;
    for subject in [
        "$JS.API.STREAM.DELETE.ORDERS",
        "$JS.API.STREAM.PURGE.ORDERS",
        "$JS.API.CONSUMER.DELETE.ORDERS.paymentworker",
    ] {
        admin
            .client
            .publish(subject, "".into())
            .await
            .expect("sent");
        admin.refused("a destructive call", subject).await;
    }
    assert!(
        operator.get_stream("ORDERS").await.is_ok(),
        "the stream is still there"
    );
    assert_eq!(messages(&operator, "DEADLETTERS").await, 0);
    // The server logs each refusal: the saga test relies on that to show nothing was refused.
    assert!(
        nats.log().contains("Publish Violation"),
        "nats-server logs refusals:\n{}",
        nats.log()
    );

    // Expected: a wrong password stops each binary at start-up with an error that names the server
    // and the user, never the password.
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    for (binary, user, extra) in [
        ("bootstrapper", "bootstrapper", vec![]),
        (
            "eventstore",
            "eventstore",
            vec![
                ("EVENTSTORE_ADDR", "127.0.0.1:0"),
                (
                    "EVENTSTORE_DATABASE_URL",
                    "postgresql://root@127.0.0.1:1/eventstoredb?sslmode=disable",
                ),
            ],
        ),
        (
            "reviewworker",
            "reviewworker",
            vec![("EVENTSTORE_URL", "http://127.0.0.1:1")],
        ),
        ("orderctl", "orderctl", vec![]),
    ] {
        let mut env = vec![
            ("NATS_URL".to_owned(), url.clone()),
            ("NATS_USER".to_owned(), user.to_owned()),
            ("NATS_PASSWORD".to_owned(), wrong.clone()),
            ("RUST_LOG".to_owned(), "debug".to_owned()),
            ("ZIPKIN_ENDPOINT".to_owned(), String::new()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut process = command(binary, &env);
        match binary {
            "bootstrapper" => {
                process.arg("--skip-sql");
            }
            "orderctl" => {
                process.args(["dead-letters", "list"]);
            }
            _ => {}
        }
        let (code, output) = run(process, Duration::from_secs(20)).await;
        assert!(
            code.is_some_and(|code| code != 0),
            "{binary} with a wrong password stops at start-up, non-zero (exit {code:?}):\n{output}"
        );
        assert!(
            !output.contains(&wrong),
            "{binary} shows the password:\n{output}"
        );
        let shown = format!("{url} as user \"{user}\"");
        assert!(
            output.contains(&shown) && output.contains("authorization violation"),
            "{binary} names the server and the user ({shown}) and why:\n{output}"
        );
    }
}

#[tokio::test]
async fn no_help_text_shows_a_password_from_the_environment() {
    let env = [
        ("NATS_PASSWORD".to_owned(), "help-secret-1".to_owned()),
        (
            "NATS_URL".to_owned(),
            "nats://u:help-secret-2@127.0.0.1:4222".to_owned(),
        ),
    ];
    for name in [
        "eventstore",
        "paymentworker",
        "reviewworker",
        "querymodelworker",
        "bootstrapper",
        "orderctl",
    ] {
        let mut help = command(name, &env);
        help.arg("--help");
        let (code, output) = run(help, Duration::from_secs(10)).await;
        assert_eq!(code, Some(0), "{name} --help: {output}");
        assert!(
            output.contains("NATS_PASSWORD") && output.contains("NATS_USER"),
            "{name} --help lists the NATS credentials' variables:\n{output}"
        );
        assert!(
            !output.contains("help-secret"),
            "{name} --help shows a secret:\n{output}"
        );
    }
}

#[tokio::test]
async fn nats_over_tls_takes_clients_with_the_ca_and_refuses_those_without() {
    let certificates = Certificates::make().expect("test certificates");
    let path = |file: PathBuf| file.display().to_string();
    let (ca, cert, key) = (
        path(certificates.ca()),
        path(certificates.server_cert()),
        path(certificates.server_key()),
    );
    let nats = NatsServer::start_with_config(&format!(
        "tls {{\n    cert_file: \"{cert}\"\n    key_file: \"{key}\"\n}}\n"
    ))
    .expect("nats-server starts with TLS");
    let port = nats.port();

    // Expected: the bootstrapper, told the CA (and a tls:// URL), creates the stream over TLS.
    let env = [
        ("NATS_URL".to_owned(), format!("tls://127.0.0.1:{port}")),
        ("NATS_TLS_CA".to_owned(), ca.clone()),
    ];
    let mut bootstrap = command("bootstrapper", &env);
    bootstrap.arg("--skip-sql");
    let (code, output) = run(bootstrap, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "the bootstrapper works over TLS: {output}");
    assert!(output.contains("stream ORDERS"), "{output}");

    // Expected: a service with NATS_TLS_CA (and a plain nats:// URL) connects and pulls.
    let tls = NatsArgs::new(nats.url()).with_tls_ca(&ca);
    let js = jetstream_as(tls).await;
    let env = [
        ("NATS_URL".to_owned(), nats.url()),
        ("NATS_TLS_CA".to_owned(), ca.clone()),
        ("EVENTSTORE_URL".to_owned(), "http://127.0.0.1:1".to_owned()),
        ("ZIPKIN_ENDPOINT".to_owned(), String::new()),
    ];
    let mut worker = command("reviewworker", &env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("reviewworker starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_stream("ORDERS")
            .await
            .expect("stream")
            .get_consumer("reviewworker")
            .await
            .expect("consumer");
        if consumer.info().await.is_ok_and(|info| info.num_waiting > 0) {
            break;
        }
        if Instant::now() >= deadline || worker.try_wait().is_ok_and(|s| s.is_some()) {
            let _ = worker.kill();
            panic!("reviewworker never pulled over TLS");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = worker.kill();
    let _ = worker.wait();

    // Expected: without the CA, the server's certificate is not trusted: refused at start-up.
    for url in [nats.url(), format!("tls://127.0.0.1:{port}")] {
        let mut bootstrap = command("bootstrapper", &[("NATS_URL".to_owned(), url.clone())]);
        bootstrap.arg("--skip-sql");
        let (code, output) = run(bootstrap, Duration::from_secs(20)).await;
        assert_eq!(code, Some(1), "refused without the CA ({url}): {output}");
        assert!(
            output.contains("refused")
                && (output.contains("certificate") || output.contains("TLS")),
            "the error says the certificate was not trusted ({url}): {output}"
        );
    }
    let env = [
        ("NATS_URL".to_owned(), nats.url()),
        ("EVENTSTORE_URL".to_owned(), "http://127.0.0.1:1".to_owned()),
        ("ZIPKIN_ENDPOINT".to_owned(), String::new()),
    ];
    let (code, output) = run(command("reviewworker", &env), Duration::from_secs(20)).await;
    assert!(
        code.is_some_and(|code| code != 0),
        "a worker without the CA stops at start-up (exit {code:?}): {output}"
    );

    // Expected: a client that insists on TLS is refused by a server without it.
    let plain = NatsServer::start().expect("nats-server starts");
    let env = [
        ("NATS_URL".to_owned(), plain.url()),
        ("NATS_TLS_CA".to_owned(), ca),
    ];
    let mut bootstrap = command("bootstrapper", &env);
    bootstrap.arg("--skip-sql");
    let (code, output) = run(bootstrap, Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "TLS required, the server has none: {output}");
}
