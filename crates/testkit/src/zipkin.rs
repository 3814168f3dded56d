//! A Zipkin v2 receiver for tests: the real Zipkin is a Java server that cannot be installed here.
//!
//! It accepts what services export (`POST /api/v2/spans`, a JSON array of spans) and answers the
//! read API the way Zipkin does: `GET /api/v2/trace/{traceId}`, `GET /api/v2/traces` (with
//! `serviceName` and `limit`) and `GET /api/v2/services`. It runs on its own thread and runtime, so
//! it works from synchronous and asynchronous tests alike, and `stop()` makes it go away (the port
//! refuses connections) to simulate Zipkin being down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use anyhow::Context as _;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

type Store = Arc<Mutex<Vec<Value>>>;

/// A running receiver; stopped on `Drop`.
pub struct Zipkin {
    addr: SocketAddr,
    spans: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Zipkin {
    /// Starts a receiver on a free port of 127.0.0.1; it accepts connections when this returns.
    pub fn start() -> anyhow::Result<Zipkin> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        listener
            .set_nonblocking(true)
            .context("non-blocking listener")?;
        let addr = listener.local_addr().context("local address")?;
        let spans: Store = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the Zipkin receiver")?;
        let app = axum::Router::new()
            .route("/api/v2/spans", post(receive))
            .route("/api/v2/trace/{id}", get(trace))
            .route("/api/v2/traces", get(traces))
            .route("/api/v2/services", get(services))
            .with_state(Arc::clone(&spans));
        let thread = std::thread::Builder::new()
            .name(format!("zipkin-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    // Dropping the server future on stop closes the listener; dropping the runtime
                    // afterwards closes the connections still open.
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("starting the Zipkin receiver thread")?;
        Ok(Zipkin {
            addr,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where services send spans: `ZIPKIN_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("{}/api/v2/spans", self.base_url())
    }

    /// `http://127.0.0.1:<port>`, the root of the read API.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<Value> {
        spans_of(&self.spans(), trace_id)
    }

    /// Stops the receiver: from now on its port refuses connections. The spans stay readable.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Zipkin {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn receive(State(store): State<Store>, headers: HeaderMap, body: Bytes) -> Response {
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|encoding| encoding != "identity")
    {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this receiver takes plain JSON",
        )
            .into_response();
    }
    match serde_json::from_slice::<Vec<Value>>(&body) {
        Ok(spans) => {
            store
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(spans);
            StatusCode::ACCEPTED.into_response()
        }
        Err(err) => (
            StatusCode::BAD_REQUEST,
            format!("not a JSON array of spans: {err}"),
        )
            .into_response(),
    }
}

async fn trace(State(store): State<Store>, Path(id): Path<String>) -> Response {
    let spans = spans_of(&snapshot(&store), &id);
    if spans.is_empty() {
        return (StatusCode::NOT_FOUND, format!("trace {id} not found")).into_response();
    }
    Json(spans).into_response()
}

async fn traces(
    State(store): State<Store>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Vec<Vec<Value>>> {
    let limit = query
        .get("limit")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(10);
    let service = query.get("serviceName").map(|s| s.to_lowercase());
    let mut by_trace: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for span in snapshot(&store) {
        let id = span["traceId"].as_str().unwrap_or_default().to_owned();
        by_trace.entry(id).or_default().push(span);
    }
    let mut found: Vec<Vec<Value>> = by_trace
        .into_values()
        .filter(|spans| {
            service.as_ref().is_none_or(|wanted| {
                spans
                    .iter()
                    .any(|s| service_name(s).is_some_and(|name| &name.to_lowercase() == wanted))
            })
        })
        .collect();
    // Newest first, as Zipkin lists them.
    found.sort_by_key(|spans| {
        std::cmp::Reverse(
            spans
                .iter()
                .filter_map(|s| s["timestamp"].as_u64())
                .min()
                .unwrap_or(0),
        )
    });
    found.truncate(limit);
    Json(found)
}

async fn services(State(store): State<Store>) -> Json<Vec<String>> {
    let names: BTreeSet<String> = snapshot(&store)
        .iter()
        .filter_map(|s| service_name(s).map(str::to_owned))
        .collect();
    Json(names.into_iter().collect())
}

fn snapshot(store: &Store) -> Vec<Value> {
    store.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn service_name(span: &Value) -> Option<&str> {
    span["localEndpoint"]["serviceName"].as_str()
}

/// Zipkin compares trace ids case-insensitively, and a 64-bit id matches the low half of a 128-bit one.
fn spans_of(spans: &[Value], trace_id: &str) -> Vec<Value> {
    let wanted = trace_id.to_lowercase();
    spans
        .iter()
        .filter(|span| {
            let id = span["traceId"].as_str().unwrap_or_default().to_lowercase();
            id == wanted || (wanted.len() == 16 && id.ends_with(&wanted))
        })
        .cloned()
        .collect()
}
