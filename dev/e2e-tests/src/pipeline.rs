//! Starts the pipeline's binaries as processes against a test kit PostgreSQL and nats-server.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use devstack::certs::ServiceCerts;
use devstack::services::{self, Detach, Endpoints};
use rust_decimal::Decimal;
use serde_json::Value;
use testkit::{NatsCluster, NatsServer, PgCluster, Postgres};

/// Binaries of the workspace, found in the profile folder (`target/<profile>/`) of the running
/// executable: a test or benchmark runs from `target/<profile>/deps/`, a binary of this crate from
/// `target/<profile>/`. One older than its sources is refused ([`crate::fresh`]). Panics when it
/// is missing or stale.
pub fn binary(name: &str) -> PathBuf {
    fresh_binary(name).unwrap_or_else(|error| panic!("{error:#}"))
}

/// [`binary`], with an error instead of a panic.
fn fresh_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = find_binary(name)?;
    crate::fresh::refuse_stale(std::slice::from_ref(&path))?;
    Ok(path)
}

fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the running executable's path")?;
    let folders = exe.ancestors().skip(1).take(2);
    let candidates: Vec<PathBuf> = folders.map(|dir| dir.join(name)).collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "{name} is missing beside {}: build the workspace's binaries first (cargo build --workspace --bins)",
                exe.display()
            )
        })
}

/// How [`Pipeline::start_with`] sets the pipeline up; the default is [`Pipeline::start`]'s.
#[derive(Debug, Default)]
pub struct Options {
    /// Variables every process, the bootstrapper included, gets on top of [`Pipeline::env`]
    /// (later ones win), e.g. `ZIPKIN_ENDPOINT` of a `testkit::Zipkin`.
    pub env: Vec<(String, String)>,
    /// Extra arguments of the bootstrapper, e.g. `--replicas 3`.
    pub bootstrap_args: Vec<String>,
    /// A nats-server the caller started (e.g. with a configuration of its own); default: a fresh one.
    pub nats: Option<NatsServer>,
    /// A three-node cluster the caller started: every process gets its nodes as `NATS_URL` (a
    /// standalone nats-server still starts, unused).
    pub nats_cluster: Option<NatsCluster>,
    /// Three PostgreSQL nodes under Patroni the caller started: every process reaches its
    /// databases through the cluster's HAProxy (a standalone PostgreSQL still starts, unused).
    pub pg_cluster: Option<PgCluster>,
    /// Bootstrap only: start no service.
    pub no_services: bool,
    /// The event store without TLS and client certificates (default: mTLS, a certificate per
    /// service, as in the dev stack).
    pub plaintext_eventstore: bool,
}

/// The pipeline's services, in start order (the dev stack's, which starts them the same way).
pub use devstack::services::SERVICES;

struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

pub struct Pipeline {
    pub postgres: Postgres,
    pub nats: NatsServer,
    /// The cluster of [`Options::nats_cluster`], which `NATS_URL` then names.
    pub nats_cluster: Option<NatsCluster>,
    /// The cluster of [`Options::pg_cluster`], whose HAProxy the database URLs then name.
    pub pg_cluster: Option<PgCluster>,
    logs: tempfile::TempDir,
    eventstore_port: u16,
    ordersvc_port: u16,
    processes: Vec<Process>,
    /// Variables every process gets on top of the defaults (later ones win).
    env_overrides: Vec<(String, String)>,
    /// Signs the tokens ordersvc accepts ([`Pipeline::token_for`]).
    tokens: crate::tokens::Tokens,
    /// The service identities (mTLS), in a temporary folder of their own; `None`: a plaintext
    /// event store.
    certs: Option<(tempfile::TempDir, ServiceCerts)>,
    /// Sends an operator's token with every request, so it reaches every order.
    pub http: reqwest::Client,
}

impl Pipeline {
    /// Databases, stream and consumers bootstrapped, then one process of each service. An error
    /// when a binary is missing or stale, a server does not start, the bootstrapper fails or a
    /// service is not ready in time.
    pub async fn start() -> anyhow::Result<Pipeline> {
        Self::start_with(Options::default()).await
    }

    /// As [`Pipeline::start`], every process getting `env` on top of the usual environment (for
    /// instance `ZIPKIN_ENDPOINT` of a `testkit::Zipkin`).
    pub async fn start_with_env(env: &[(&str, &str)]) -> anyhow::Result<Pipeline> {
        Self::start_with(Options {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Options::default()
        })
        .await
    }

    /// Servers started and the bootstrapper run, no service yet.
    pub async fn bootstrapped() -> anyhow::Result<Pipeline> {
        Self::start_with(Options {
            no_services: true,
            ..Options::default()
        })
        .await
    }

    /// Servers started (or taken from `options`), the bootstrapper run, then one process of each
    /// service unless `options.no_services`.
    pub async fn start_with(options: Options) -> anyhow::Result<Pipeline> {
        testkit::init_tracing();
        // Every stale binary named at once, before any server starts.
        let paths = ["bootstrapper"]
            .iter()
            .chain(&SERVICES)
            .map(|name| find_binary(name))
            .collect::<anyhow::Result<Vec<PathBuf>>>()?;
        crate::fresh::refuse_stale(&paths)?;
        let postgres = Postgres::start().context("starting PostgreSQL")?;
        let nats = match options.nats {
            Some(nats) => nats,
            None => NatsServer::start().context("starting nats-server")?,
        };
        let tokens = crate::tokens::Tokens::make().context("making the token signing key")?;
        let certs = if options.plaintext_eventstore {
            None
        } else {
            let dir = tempfile::tempdir().context("creating the certificates' folder")?;
            let certs = ServiceCerts::make(dir.path())?;
            Some((dir, certs))
        };
        let mut pipeline = Pipeline {
            postgres,
            nats,
            nats_cluster: options.nats_cluster,
            pg_cluster: options.pg_cluster,
            logs: tempfile::tempdir().context("creating the log folder")?,
            certs,
            eventstore_port: testkit::free_port(),
            ordersvc_port: testkit::free_port(),
            processes: Vec::new(),
            env_overrides: options.env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .default_headers(bearer(tokens.operator())?)
                .build()
                .context("building the HTTP client")?,
            tokens,
        };
        pipeline.bootstrap(&options.bootstrap_args)?;
        if !options.no_services {
            for service in SERVICES {
                pipeline.start_process(service, &[])?;
            }
            pipeline.wait_ready().await?;
        }
        Ok(pipeline)
    }

    /// Runs the bootstrapper with `args`; an error with its output when it fails.
    pub fn bootstrap(&self, args: &[String]) -> anyhow::Result<()> {
        let output = Command::new(fresh_binary("bootstrapper")?)
            .args(args)
            .envs(self.env())
            .output()
            .context("running the bootstrapper")?;
        if !output.status.success() {
            bail!(
                "bootstrapper failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Runs `eventstore republish` with `args` as the event store's processes are configured; its
    /// output (the report on stdout), whatever its exit status.
    pub fn republish(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(fresh_binary("eventstore")?)
            .arg("republish")
            .args(args)
            .envs(self.env_for(Some("eventstore")))
            .output()
            .context("running eventstore republish")
    }

    /// Where the log files of the processes are.
    pub fn log_dir(&self) -> &std::path::Path {
        self.logs.path()
    }

    /// `NATS_URL` as the processes get it (an override in [`Options::env`] wins).
    pub fn nats_url(&self) -> String {
        self.env()
            .into_iter()
            .rev()
            .find(|(k, _)| k == "NATS_URL")
            .map(|(_, v)| v)
            .unwrap_or_else(|| self.default_nats_url())
    }

    /// The cluster's nodes when there is one, else the nats-server's URL.
    fn default_nats_url(&self) -> String {
        self.nats_cluster
            .as_ref()
            .map_or_else(|| self.nats.url(), NatsCluster::urls)
    }

    /// `database` as the administrator (`root`), who may read and change everything.
    pub fn database_url(&self, database: &str) -> String {
        match &self.pg_cluster {
            Some(cluster) => cluster.url(database),
            None => self.postgres.url(database),
        }
    }

    /// `database` as role `user` (no password: the test kit's PostgreSQL trusts local logins, so
    /// only the grants keep a role out of the other contexts' databases).
    pub fn role_url(&self, user: &str, database: &str) -> String {
        self.endpoints().role_url(user, database)
    }

    /// Where the processes find each other and their databases.
    fn endpoints(&self) -> Endpoints {
        Endpoints {
            pg_port: self
                .pg_cluster
                .as_ref()
                .map_or_else(|| self.postgres.port(), PgCluster::port),
            nats_url: self.default_nats_url(),
            eventstore_port: self.eventstore_port,
            ordersvc_port: self.ordersvc_port,
        }
    }

    /// The environment every process gets.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(None)
    }

    /// The environment of `service`'s processes: [`Pipeline::env`], but ordersvc and deadlinewatcher
    /// read `ordersdb` as the read-only roles the bootstrapper made for them (only querymodelworker
    /// writes there); [`Options::env`] still wins.
    pub fn env_for(&self, service: Option<&str>) -> Vec<(String, String)> {
        let defaults = [
            ("ZIPKIN_ENDPOINT", String::new()),
            ("RUST_LOG", "info".to_owned()),
            // Saga deadlines far beyond what these tests' faults cost: a worker killed mid-flight
            // delays its messages by the 30 s ack wait, as long as the default payment deadline, and
            // a test that expects such an order Approved must not race the watcher. The deadline
            // tests and the chaos run set their own.
            ("PAYMENT_DEADLINE", "5m".to_owned()),
            ("REVIEW_DEADLINE", "5m".to_owned()),
        ];
        let tokens = match service {
            Some("ordersvc") => self.tokens.ordersvc_env(),
            _ => Vec::new(),
        };
        let mut env = self.endpoints().env(service);
        if let Some((_, certs)) = &self.certs {
            // The bootstrapper and the tests' own orderctl runs (`None`) get orderctl's identity.
            let process = service.filter(|s| *s != "bootstrapper");
            devstack::certs::override_env(&mut env, certs.env(process, self.eventstore_port));
        }
        env.into_iter()
            .chain(defaults.into_iter().map(|(k, v)| (k.to_owned(), v)))
            .chain(tokens)
            .chain(self.env_overrides.iter().cloned())
            .collect()
    }

    /// An operator's token (scope `orders:admin`), which [`Pipeline::http`] sends.
    pub fn operator_token(&self) -> String {
        self.tokens.operator().to_owned()
    }

    /// Default headers for a client of its own that sends the operator's token.
    pub fn operator_headers(&self) -> reqwest::header::HeaderMap {
        bearer(self.tokens.operator()).unwrap_or_default()
    }

    /// A token of `customer_id`, who reaches only their own orders.
    pub fn token_for(&self, customer_id: &str) -> String {
        self.tokens.customer(customer_id)
    }

    /// The key that signs this pipeline's tokens (for tokens with claims of a test's choosing).
    pub fn token_issuer(&self) -> &testkit::tokens::TokenIssuer {
        &self.tokens.issuer
    }

    /// Starts one more process of `service`; returns its index among that service's processes.
    pub fn spawn(&mut self, service: &str) -> usize {
        self.spawn_with(service, &[])
    }

    pub fn spawn_with(&mut self, service: &str, extra_env: &[(&str, &str)]) -> usize {
        self.start_process(service, extra_env)
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    /// [`Pipeline::spawn_with`], with an error instead of a panic.
    fn start_process(
        &mut self,
        service: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<usize> {
        let index = self.processes.iter().filter(|p| p.name == service).count();
        let log = self.logs.path().join(format!("{service}-{index}.log"));
        let mut env = self.env_for(Some(service));
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let child = services::spawn(&fresh_binary(service)?, &[], &env, &[], &log, Detach::No)
            .with_context(|| format!("cannot start {service}"))?;
        self.processes.push(Process {
            name: service.to_owned(),
            child,
            log,
        });
        Ok(index)
    }

    /// Starts process `index` of `service` again (after [`Pipeline::kill`] or a clean stop), with the
    /// same log file (appended to).
    pub fn restart(&mut self, service: &str, index: usize) {
        let env = self.env_for(Some(service));
        let process = self.process(service, index);
        let _ = process.child.kill();
        let _ = process.child.wait();
        process.child = services::spawn(&binary(service), &[], &env, &[], &process.log, Detach::No)
            .unwrap_or_else(|err| panic!("cannot start {service}: {err:#}"));
    }

    /// Whether process `index` of `service` is still running.
    pub fn is_running(&mut self, service: &str, index: usize) -> bool {
        matches!(self.process(service, index).child.try_wait(), Ok(None))
    }

    fn process(&mut self, service: &str, index: usize) -> &mut Process {
        self.processes
            .iter_mut()
            .filter(|p| p.name == service)
            .nth(index)
            .unwrap_or_else(|| panic!("no process {service}#{index}"))
    }

    /// Sends a signal (`KILL`, `TERM`, `STOP`, `CONT`) to one process.
    pub fn signal(&mut self, service: &str, index: usize, signal: &str) {
        let pid = self.process(service, index).child.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {service}#{index}");
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self, service: &str, index: usize) {
        let process = self.process(service, index);
        let _ = process.child.kill();
        let _ = process.child.wait();
    }

    /// SIGTERM, and waits (bounded) for a clean exit; returns the exit status.
    pub fn terminate(&mut self, service: &str, index: usize) -> std::process::ExitStatus {
        self.signal(service, index, "TERM");
        let process = self.process(service, index);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = process.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{service}#{index} did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ordersvc_port)
    }

    /// Waits until the event store takes connections, ordersvc answers /healthz, every worker
    /// consumer has a pull request waiting and deadlinewatcher says it is watching; an error with
    /// the end of every log after 30 s.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let endpoints = self.endpoints();
        for service in ["eventstore", "ordersvc"] {
            let ready = endpoints.readiness(service);
            while !ready.check() {
                self.check_deadline(deadline, &format!("{service} to be ready ({ready:?})"))?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let js = self.connect_jetstream().await?;
        for durable in ["paymentworker", "reviewworker", "querymodelworker"] {
            if !self.processes.iter().any(|p| p.name == durable) {
                continue;
            }
            loop {
                let stream = js.get_stream("ORDERS").await.context("the ORDERS stream")?;
                let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
                    stream.get_consumer(durable).await;
                if let Ok(mut consumer) = consumer
                    && consumer.info().await.is_ok_and(|info| info.num_waiting > 0)
                {
                    break;
                }
                self.check_deadline(deadline, &format!("{durable} to pull"))?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let watchers = self
            .processes
            .iter()
            .filter(|p| p.name == "deadlinewatcher")
            .count();
        for index in 0..watchers {
            while !self
                .log("deadlinewatcher", index)
                .contains("deadlinewatcher watching")
            {
                self.check_deadline(deadline, "deadlinewatcher to watch")?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Everything process `index` of `service` wrote so far (stdout and stderr).
    pub fn log(&self, service: &str, index: usize) -> String {
        self.processes
            .iter()
            .filter(|p| p.name == service)
            .nth(index)
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    fn check_deadline(&self, deadline: tokio::time::Instant, what: &str) -> anyhow::Result<()> {
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out waiting for {what}\n{}", self.all_logs());
        }
        Ok(())
    }

    fn all_logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- {} ({}) ---\n{}",
                    p.name,
                    p.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        self.connect_jetstream()
            .await
            .unwrap_or_else(|error| panic!("{error:#}"))
    }

    async fn connect_jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        // NATS_URL may list several servers; `connect` takes one URL per address.
        let servers = self
            .nats_url()
            .split(',')
            .map(|url| url.trim().parse().context("NATS_URL lists valid URLs"))
            .collect::<anyhow::Result<Vec<async_nats::ServerAddr>>>()?;
        let client = async_nats::connect(servers.as_slice())
            .await
            .context("connecting to NATS")?;
        Ok(async_nats::jetstream::new(client))
    }

    /// POSTs an order; returns status and JSON body.
    pub async fn post_order(&self, body: &Value, idempotency_key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/api/orders", self.base_url()))
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("POST answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs an order that must be accepted; returns its id.
    pub async fn place(&self, customer: &str, unit_price: &str, quantity: u32) -> String {
        let (status, body) = self
            .post_order(&order_body(customer, unit_price, quantity), None)
            .await;
        assert_eq!(status, 201, "order accepted: {body}");
        body["order_id"].as_str().expect("order_id").to_owned()
    }

    pub async fn get_order(&self, order_id: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/api/orders/{order_id}", self.base_url()))
            .send()
            .await
            .expect("GET answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn cancel(&self, order_id: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/orders/{order_id}/cancel", self.base_url()))
            .json(&serde_json::json!({"reason": "changed my mind"}))
            .send()
            .await
            .expect("cancel answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the read model shows `order_id` satisfying `done`; returns the order.
    pub async fn wait_for(
        &self,
        order_id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get_order(order_id).await;
            if status == 200 && done(&body) {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "order {order_id} never became {what}; last answer {status} {body}\n{}",
                    self.all_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the order is final (and, when refunded is expected, refunded).
    pub async fn wait_final(&self, order_id: &str) -> Value {
        self.wait_for(order_id, "final", |o| {
            let status = o["status"].as_str().unwrap_or_default();
            let needs_refund =
                status == "Rejected" || (status == "Cancelled" && o["version"].as_i64() >= Some(3));
            is_final(status) && (!needs_refund || o["refunded"] == Value::Bool(true))
        })
        .await
    }

    /// The stored events of an order, in version order, from the event store via the API.
    pub async fn events(&self, order_id: &str) -> Vec<Value> {
        let events: Value = self
            .http
            .get(format!("{}/api/orders/{order_id}/events", self.base_url()))
            .send()
            .await
            .expect("events answer")
            .json()
            .await
            .expect("JSON");
        events
            .as_array()
            .or_else(|| events["events"].as_array())
            .expect("a list of events")
            .clone()
    }

    /// The event types of an order, in version order, from the event store via the API.
    pub async fn event_types(&self, order_id: &str) -> Vec<String> {
        self.events(order_id)
            .await
            .iter()
            .map(|e| e["event_type"].as_str().expect("event_type").to_owned())
            .collect()
    }

    pub async fn wallet(&self, customer: &str) -> Decimal {
        let pool = sqlx::PgPool::connect(&self.database_url("paymentsdb"))
            .await
            .expect("paymentsdb");
        let balance: Decimal =
            sqlx::query_scalar("SELECT balance FROM wallets WHERE customer_id = $1")
                .bind(customer)
                .fetch_one(&pool)
                .await
                .expect("wallet exists");
        pool.close().await;
        balance
    }

    pub async fn count_events(&self) -> i64 {
        let pool = sqlx::PgPool::connect(&self.database_url("eventstoredb"))
            .await
            .expect("eventstoredb");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.all_logs());
        }
        for process in &mut self.processes {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

/// Default headers that send `token` as the bearer token.
fn bearer(token: &str) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("a token is a header value")?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

/// The reference implementation's request body with one item.
pub fn order_body(customer: &str, unit_price: &str, quantity: u32) -> Value {
    serde_json::json!({
        "customer_id": customer,
        "restaurant_id": "r1",
        "order_items": [{"code": "p1", "name": "Pizza", "unit_price": unit_price, "quantity": quantity}]
    })
}

/// Whether `status`, as the API spells it, is one an order never leaves (the domain's
/// [`OrderStatus::is_final`]).
pub fn is_final(status: &str) -> bool {
    status
        .parse::<order_domain::OrderStatus>()
        .is_ok_and(order_domain::OrderStatus::is_final)
}
