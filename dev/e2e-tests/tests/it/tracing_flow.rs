//! Every order is one trace in Zipkin: the services export to a test kit Zipkin receiver.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use testkit::Zipkin;

use e2e_tests::{Pipeline, order_body};

const SERVICES: [&str; 5] = [
    "ordersvc",
    "eventstore",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
];
const EXPORT_WARNING: &str = "cannot export spans to Zipkin";

async fn start(zipkin: &Zipkin) -> Pipeline {
    let endpoint = zipkin.endpoint();
    // A short batch delay, so spans arrive within a test's patience.
    Pipeline::start_with_env(&[
        ("ZIPKIN_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await
    .expect("the pipeline starts")
}

/// POSTs an order (with the caller's `traceparent`, if given); returns its id and the response's
/// `traceparent`.
async fn post(pipeline: &Pipeline, customer: &str, traceparent: Option<&str>) -> (String, String) {
    let mut request = pipeline
        .http
        .post(format!("{}/api/orders", pipeline.base_url()))
        .json(&order_body(customer, "12.50", 2));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.expect("POST answers");
    assert_eq!(response.status().as_u16(), 201);
    let traceparent = response
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("every response carries the traceparent of its server span")
        .to_owned();
    let body: Value = response.json().await.expect("JSON");
    (
        body["order_id"].as_str().expect("order_id").to_owned(),
        traceparent,
    )
}

fn field(traceparent: &str, index: usize) -> &str {
    traceparent
        .split('-')
        .nth(index)
        .expect("a W3C traceparent")
}

fn kind(span: &Value) -> &str {
    span["kind"].as_str().unwrap_or("INTERNAL")
}

fn service(span: &Value) -> &str {
    span["localEndpoint"]["serviceName"].as_str().unwrap_or("?")
}

fn describe(spans: &[Value]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {} id={} parent={}",
                service(s),
                kind(s),
                s["name"].as_str().unwrap_or("?"),
                s["id"].as_str().unwrap_or("?"),
                s["parentId"].as_str().unwrap_or("-")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the trace holds the spans of an approved order's whole saga: three publishes
/// (created, paymentdebited, approved) and their five consumptions (querymodelworker takes every
/// event, paymentworker the `created`, reviewworker the debit). Then lets stragglers arrive.
async fn approved_trace(zipkin: &Zipkin, trace_id: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spans = zipkin.trace(trace_id);
        let count = |k: &str| spans.iter().filter(|s| kind(s) == k).count();
        if count("PRODUCER") >= 3 && count("CONSUMER") >= 5 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return zipkin.trace(trace_id);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace {trace_id} never completed; it holds:\n{}",
            describe(&spans)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The checks every order's trace passes; `caller` is the span id of a caller's `traceparent`.
fn assert_one_connected_trace(spans: &[Value], caller: Option<&str>) {
    let all = describe(spans);
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["id"].as_str().expect("span id"), s))
        .collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique:\n{all}");

    let services: BTreeSet<&str> = spans.iter().map(service).collect();
    assert_eq!(
        services,
        SERVICES.into_iter().collect(),
        "spans of all five services:\n{all}"
    );

    // One root: the POST's server span, whose parent is the caller's span or nothing.
    let roots: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            s["parentId"]
                .as_str()
                .is_none_or(|parent| !by_id.contains_key(parent))
        })
        .collect();
    assert_eq!(roots.len(), 1, "one root, no orphans:\n{all}");
    let root = roots[0];
    assert_eq!(service(root), "ordersvc");
    assert_eq!(kind(root), "SERVER");
    assert_eq!(root["name"], "POST /api/orders", "{root}");
    assert_eq!(root["parentId"].as_str(), caller, "{root}");
    assert_eq!(root["tags"]["http.response.status_code"], "201", "{root}");

    let parent = |span: &Value| -> &Value { by_id[span["parentId"].as_str().expect("a parent")] };
    for span in spans {
        match kind(span) {
            "CONSUMER" => {
                let publish = parent(span);
                assert_eq!(
                    kind(publish),
                    "PRODUCER",
                    "a consumer is a child of the publish:\n{all}"
                );
                assert_eq!(
                    span["tags"]["messaging.destination.name"],
                    publish["tags"]["messaging.destination.name"]
                );
                assert_eq!(span["tags"]["messaging.system"], "nats");
            }
            "PRODUCER" => {
                assert_eq!(service(span), "eventstore");
                // The POST's append call, or the delivery a worker decided the event on: a
                // worker's batch append serves many orders, so its call belongs to no order.
                let cause = parent(span);
                assert!(
                    (kind(cause) == "CLIENT" && service(cause) == "ordersvc")
                        || (kind(cause) == "CONSUMER"
                            && ["paymentworker", "reviewworker"].contains(&service(cause))),
                    "a publish continues what appended its event:\n{all}"
                );
                assert_eq!(span["tags"]["messaging.system"], "nats");
            }
            _ => {}
        }
    }
    let kinds = |name: &str| -> BTreeSet<&str> {
        spans
            .iter()
            .filter(|s| service(s) == name)
            .map(kind)
            .collect()
    };
    assert!(
        kinds("ordersvc").is_superset(&["SERVER", "CLIENT"].into()),
        "{all}"
    );
    assert!(
        kinds("eventstore").is_superset(&["SERVER", "PRODUCER"].into()),
        "{all}"
    );
    for worker in ["paymentworker", "reviewworker"] {
        assert!(kinds(worker).contains("CONSUMER"), "{all}");
    }
    // One span per step: a worker's span only for the events it acts on (paymentworker's
    // consumer gets every event, but opens a span for `created` alone here).
    assert!(
        spans.len() <= 16,
        "{} spans for one approved order:\n{all}",
        spans.len()
    );
    assert!(kinds("querymodelworker").contains("CONSUMER"), "{all}");
    assert!(
        spans.iter().any(|s| s["tags"]["db.system"] == "postgresql"),
        "SQL transactions have spans:\n{all}"
    );
}

/// Headless Chromium's flags for a test run as root: no sandbox, no GPU, nothing fetched.
const CHROMIUM_FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];

/// Runs Chromium on `url` with `args` (and a fresh profile), at most a minute; returns its stdout.
async fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a profile folder");
    let mut command = std::process::Command::new("chromium");
    command
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null());
    // Into files, not pipes: a full pipe would stall Chromium until the deadline.
    let out_path = profile.path().join("stdout");
    let err_path = profile.path().join("stderr");
    command
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let what = format!("chromium {args:?} {url}");
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap_or_else(|err| {
            panic!(
                "cannot run chromium ({err}): scripts/test installs it (apt-get install chromium)"
            )
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("chromium's status").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what} did not finish within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = child.wait().expect("chromium's status");
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        assert!(status.success(), "{what}: {stderr}");
        let stdout = std::fs::read_to_string(&out_path).expect("chromium's output");
        drop(profile);
        stdout
    })
    .await
    .expect("the chromium task")
}

/// The value of attribute `name` in the tag `tag` (`<div class="row" data-...>`).
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(&tag[start..end])
}

/// Renders `/zipkin/traces/{trace_id}` in Chromium and checks the DOM it built against the API:
/// one row per span, the same span ids, the five services. Keeps a screenshot in target/tmp.
async fn assert_waterfall_shows(zipkin: &Zipkin, trace_id: &str) {
    let url = format!("{}/zipkin/traces/{trace_id}", zipkin.base_url());
    let dom = chromium(&url, &["--dump-dom"]).await;
    let rows: Vec<&str> = dom
        .split("<div class=\"row")
        .skip(1)
        .filter_map(|rest| rest.split_once('>').map(|(tag, _)| tag))
        .collect();
    let shown: BTreeSet<&str> = rows
        .iter()
        .filter_map(|tag| attribute(tag, "data-span-id"))
        .collect();
    let api: Vec<Value> = zipkin_api_trace(zipkin, trace_id).await;
    let expected: BTreeSet<&str> = api.iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(rows.len(), api.len(), "one row per span of the API's trace");
    assert_eq!(shown, expected, "the rows are the API's spans");
    let services: BTreeSet<&str> = rows
        .iter()
        .filter_map(|tag| attribute(tag, "data-service"))
        .collect();
    assert_eq!(
        services,
        SERVICES.into_iter().collect(),
        "the five services"
    );

    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("trace-waterfall.png");
    chromium(
        &url,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1400,900",
            "--hide-scrollbars",
        ],
    )
    .await;
    assert!(
        screenshot.exists(),
        "a screenshot at {}",
        screenshot.display()
    );
    eprintln!("waterfall screenshot: {}", screenshot.display());
}

/// The trace as `GET /api/v2/trace/{id}` answers it.
async fn zipkin_api_trace(zipkin: &Zipkin, trace_id: &str) -> Vec<Value> {
    reqwest::get(format!("{}/api/v2/trace/{trace_id}", zipkin.base_url()))
        .await
        .expect("the API answers")
        .json()
        .await
        .expect("spans")
}

#[tokio::test]
async fn every_order_is_one_trace_across_the_five_services_and_a_callers_trace_goes_on() {
    let zipkin = Zipkin::start().expect("Zipkin receiver");
    let pipeline = start(&zipkin).await;

    // An order of its own trace: the POST is the root.
    let (order_id, traceparent) = post(&pipeline, "tracy", None).await;
    let trace_id = field(&traceparent, 1).to_owned();
    let order = pipeline.wait_final(&order_id).await;
    assert_eq!(order["status"], "Approved", "{order}");
    assert_eq!(
        order["trace_id"], trace_id,
        "the read model keeps the trace of the POST"
    );
    let spans = approved_trace(&zipkin, &trace_id).await;
    assert_one_connected_trace(&spans, None);
    assert!(
        spans.iter().any(|s| s["id"] == field(&traceparent, 2)),
        "the response's traceparent names the server span"
    );
    // Expected: the waterfall page, as a real browser renders it, shows exactly the spans the API
    // holds, of the five services.
    assert_waterfall_shows(&zipkin, &trace_id).await;

    // An order placed inside a caller's trace continues it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (order_id, traceparent) = post(
        &pipeline,
        "tracy",
        Some(&format!("00-{caller_trace}-{caller_span}-01")),
    )
    .await;
    assert_eq!(
        field(&traceparent, 1),
        caller_trace,
        "the caller's trace goes on"
    );
    let order = pipeline.wait_final(&order_id).await;
    assert_eq!(order["trace_id"], caller_trace);
    let spans = approved_trace(&zipkin, caller_trace).await;
    assert_one_connected_trace(&spans, Some(caller_span));
}

/// Stands where Zipkin was: accepts each connection and closes it at once (every export fails),
/// counting them, so a test knows how many exports were tried.
fn refusing_collector(endpoint: &str) -> Arc<AtomicUsize> {
    let addr = endpoint
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .expect("an http:// endpoint")
        .to_owned();
    let listener = std::net::TcpListener::bind(&addr).expect("Zipkin's port is free again");
    let tried = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&tried);
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(connection);
        }
    });
    tried
}

#[tokio::test]
async fn orders_complete_while_zipkin_is_down_and_the_export_warning_comes_once() {
    let mut zipkin = Zipkin::start().expect("Zipkin receiver");
    let pipeline = start(&zipkin).await;
    let (first, _) = post(&pipeline, "dora", None).await;
    pipeline.wait_final(&first).await;

    zipkin.stop();
    let tried = refusing_collector(&zipkin.endpoint());
    let mut orders = Vec::new();
    for _ in 0..10 {
        orders.push(post(&pipeline, "dora", None).await.0);
    }
    for order_id in &orders {
        let order = pipeline.wait_final(order_id).await;
        assert_eq!(order["status"], "Approved", "{order}");
        assert!(
            order["trace_id"].is_string(),
            "trace ids flow without Zipkin"
        );
    }
    // "Once" means: many more exports failed after the first warning, and none of them warned
    // again. So keep making spans until the collector has refused 20 exports since then.
    let warnings = |service: &str| pipeline.log(service, 0).matches(EXPORT_WARNING).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut since_warning: Option<usize> = None;
    loop {
        if since_warning.is_none() && SERVICES.iter().any(|s| warnings(s) > 0) {
            since_warning = Some(tried.load(Ordering::SeqCst));
        }
        if since_warning.is_some_and(|mark| tried.load(Ordering::SeqCst) >= mark + 20) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning, or too few failed exports after it ({} tried)",
            tried.load(Ordering::SeqCst)
        );
        let (order_id, _) = post(&pipeline, "dora", None).await;
        pipeline.wait_final(&order_id).await;
    }
    for service in SERVICES {
        let warned = warnings(service);
        assert!(
            warned <= 1,
            "{service} warned {warned} times:\n{}",
            pipeline.log(service, 0)
        );
    }
}
