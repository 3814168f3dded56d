//! tracestore over HTTP, on a real socket: what tracers post, what Zipkin clients read, what is
//! refused.

use std::io::Write as _;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tracestore::Store;

struct Server {
    base: String,
    store: Store,
    _task: tokio::task::JoinHandle<()>,
}

async fn start(max_spans: usize) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let store = Store::new(max_spans);
    let served = store.clone();
    let task = tokio::spawn(async move {
        let _ = tracestore::serve(listener, served, std::future::pending()).await;
    });
    Server {
        base,
        store,
        _task: task,
    }
}

fn span(trace: u64, id: u64, parent: Option<u64>, service: &str, name: &str, ts: u64) -> Value {
    let mut span = json!({
        "traceId": format!("{trace:032x}"),
        "id": format!("{id:016x}"),
        "name": name,
        "kind": "SERVER",
        "timestamp": ts,
        "duration": 1500,
        "localEndpoint": {"serviceName": service},
        "tags": {"http.method": "POST"},
    });
    if let Some(parent) = parent {
        span["parentId"] = json!(format!("{parent:016x}"));
    }
    span
}

fn now_micros() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros(),
    )
    .expect("micros")
}

async fn post(server: &Server, body: Vec<u8>, encoding: Option<&str>) -> (StatusCode, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v2/spans", server.base))
        .header("content-type", "application/json")
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.expect("POST");
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

async fn get(server: &Server, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(format!("{}{path}", server.base))
        .await
        .expect("GET");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn spans_posted_plain_and_gzipped_are_read_back_like_zipkin() {
    let server = start(1000).await;
    let now = now_micros();
    let first = json!([
        span(1, 10, None, "OrderSvc", "POST /api/orders", now),
        span(1, 11, Some(10), "eventstore", "append", now + 100),
    ]);
    let second = json!([span(2, 20, None, "reviewworker", "process", now + 1000)]);

    // Expected: both accepted with 202, gzip inflated.
    let (status, _) = post(&server, first.to_string().into_bytes(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = post(&server, gzip(second.to_string().as_bytes()), Some("gzip")).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Expected: the trace by its id, names as sent.
    let (status, trace) = get(&server, &format!("/api/v2/trace/{:032x}", 1)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(trace.as_array().map(Vec::len), Some(2), "{trace}");
    assert_eq!(trace[0]["localEndpoint"]["serviceName"], "OrderSvc");
    // Expected: newest first; filtered by service; services and span names listed.
    let (_, traces) = get(&server, "/api/v2/traces").await;
    assert_eq!(traces[0][0]["traceId"], format!("{:032x}", 2));
    let (_, traces) = get(&server, "/api/v2/traces?serviceName=eventstore&limit=5").await;
    assert_eq!(traces.as_array().map(Vec::len), Some(1), "{traces}");
    let (_, traces) = get(&server, "/api/v2/traces?minDuration=2000").await;
    assert_eq!(traces, json!([]), "no span lasted 2 ms");
    let (_, services) = get(&server, "/api/v2/services").await;
    assert_eq!(services, json!(["eventstore", "ordersvc", "reviewworker"]));
    let (_, names) = get(&server, "/api/v2/spans?serviceName=ordersvc").await;
    assert_eq!(names, json!(["post /api/orders"]));
    let (status, health) = get(&server, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "UP");
}

#[tokio::test]
async fn bad_bodies_are_refused_whole_and_the_store_keeps_serving() {
    let server = start(1000).await;
    let now = now_micros();
    let valid = span(3, 30, None, "a", "x", now);
    let bad_id = json!({"traceId": "not-hex", "id": "0000000000000001"});
    let cases: Vec<(Vec<u8>, Option<&str>, StatusCode)> = vec![
        (b"not json".to_vec(), None, StatusCode::BAD_REQUEST),
        (
            b"{\"an\": \"object\"}".to_vec(),
            None,
            StatusCode::BAD_REQUEST,
        ),
        // One bad span among good ones: nothing of the body is kept.
        (
            json!([valid, bad_id]).to_string().into_bytes(),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            b"\x1f\x8b garbage".to_vec(),
            Some("gzip"),
            StatusCode::BAD_REQUEST,
        ),
        (
            b"[]".to_vec(),
            Some("br"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        // 17 MiB of JSON: over the 16 MiB bound, plain and (inflated) gzipped.
        (
            vec![b' '; 17 * 1024 * 1024],
            None,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            gzip(&vec![b' '; 17 * 1024 * 1024]),
            Some("gzip"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (body, encoding, expected) in cases {
        let (status, reason) = post(&server, body, encoding).await;
        assert_eq!(status, expected, "{encoding:?}: {reason}");
        assert!(!reason.is_empty(), "a refusal says why");
    }
    assert_eq!(
        server.store.usage().spans,
        0,
        "nothing of any refused body was kept"
    );

    for (path, expected) in [
        ("/api/v2/trace/xyz", StatusCode::BAD_REQUEST),
        (
            "/api/v2/trace/00000000000000000000000000000009",
            StatusCode::NOT_FOUND,
        ),
        ("/api/v2/traces?limit=0", StatusCode::BAD_REQUEST),
        ("/api/v2/traces?endTs=yesterday", StatusCode::BAD_REQUEST),
        (
            "/api/v2/traces?annotationQuery=error",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v2/spans", StatusCode::BAD_REQUEST),
        ("/zipkin/traces/xyz", StatusCode::BAD_REQUEST),
        (
            "/zipkin/traces/00000000000000000000000000000009",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, expected, "{path}: {body}");
    }

    // Expected: still serving after all that.
    let (status, _) = post(&server, json!([valid]).to_string().into_bytes(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(server.store.usage().spans, 1);
}

#[tokio::test]
async fn memory_is_bounded_by_evicting_the_oldest_traces() {
    let server = start(10).await;
    let now = now_micros();
    for trace in 1..=6u64 {
        let spans = json!([
            span(trace, trace * 100, None, "a", "x", now + trace),
            span(
                trace,
                trace * 100 + 1,
                Some(trace * 100),
                "b",
                "y",
                now + trace
            ),
        ]);
        let (status, _) = post(&server, spans.to_string().into_bytes(), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    // Expected: 12 spans for a bound of 10: the first trace is gone, the last five are whole.
    let (status, _) = get(&server, &format!("/api/v2/trace/{:032x}", 1)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, traces) = get(&server, "/api/v2/traces?limit=100").await;
    assert_eq!(traces.as_array().map(Vec::len), Some(5), "{traces}");
    let usage = server.store.usage();
    assert_eq!((usage.spans, usage.evicted_traces), (10, 1));
}

#[tokio::test]
async fn the_pages_list_traces_and_draw_one_as_a_waterfall() {
    let server = start(100).await;
    let now = now_micros();
    let spans = json!([
        span(4, 40, None, "ordersvc", "POST /api/orders", now),
        span(4, 41, Some(40), "eventstore", "append", now + 200),
    ]);
    post(&server, spans.to_string().into_bytes(), None).await;
    let trace_id = format!("{:032x}", 4);

    let (status, index) = get(&server, "/zipkin/").await;
    assert_eq!(status, StatusCode::OK);
    let index = index.as_str().unwrap_or_default().to_owned();
    assert!(
        index.contains(&format!("href=\"/zipkin/traces/{trace_id}\"")),
        "{index}"
    );
    let (status, page) = get(&server, &format!("/zipkin/traces/{trace_id}")).await;
    assert_eq!(status, StatusCode::OK);
    let page = page.as_str().unwrap_or_default().to_owned();
    assert_eq!(page.matches("class=\"row").count(), 2, "{page}");
    assert!(
        !page.contains("<script"),
        "no script: the page works as it comes"
    );
}
