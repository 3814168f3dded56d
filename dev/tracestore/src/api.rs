//! Zipkin's v2 HTTP API over the [`Store`]: what tracers post to and what Zipkin clients read.

use std::collections::HashMap;
use std::io::Read as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::{Span, Store, TraceQuery};

/// The largest body `POST /api/v2/spans` takes, compressed or not.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// What Zipkin's UI and API default to: the last day.
const DEFAULT_LOOKBACK_MS: u64 = 86_400_000;
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 10_000;

/// A 4xx with a plain-text reason, as Zipkin answers.
#[derive(Debug)]
pub(crate) struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

pub(crate) fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal(status, reason.into())
}

/// `POST /api/v2/spans`: a JSON array of v2 spans, plain or gzip. All or nothing: one bad span
/// refuses the whole body, naming it.
pub(crate) async fn receive(
    State(store): State<Store>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Refusal> {
    if let Some(kind) = headers.get(header::CONTENT_TYPE) {
        let kind = kind.to_str().unwrap_or_default().to_ascii_lowercase();
        if !kind.starts_with("application/json") {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("only JSON v2 spans (application/json) are taken, not {kind:?}"),
            ));
        }
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|e| e.to_str().unwrap_or_default().to_ascii_lowercase());
    let json = match encoding.as_deref() {
        None | Some("identity") => body.to_vec(),
        Some("gzip") => gunzip(&body)?,
        Some(other) => {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not taken; send gzip or plain JSON"),
            ));
        }
    };
    let spans: Vec<Span> = serde_json::from_slice(&json).map_err(|err| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("not a JSON array of Zipkin v2 spans: {err}"),
        )
    })?;
    let spans = spans
        .into_iter()
        .enumerate()
        .map(|(i, span)| span.normalized().map_err(|why| format!("span {i}: {why}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|why| refuse(StatusCode::BAD_REQUEST, why))?;
    store.add(spans);
    Ok(StatusCode::ACCEPTED)
}

/// Inflates at most [`MAX_BODY_BYTES`]: a small body that inflates to gigabytes is refused, not
/// held in memory.
fn gunzip(body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let mut json = Vec::new();
    let limit = u64::try_from(MAX_BODY_BYTES).unwrap_or(u64::MAX);
    flate2::read::GzDecoder::new(body)
        .take(limit + 1)
        .read_to_end(&mut json)
        .map_err(|err| refuse(StatusCode::BAD_REQUEST, format!("not valid gzip: {err}")))?;
    if json.len() > MAX_BODY_BYTES {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the spans inflate to more than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(json)
}

/// `GET /api/v2/trace/{traceId}`.
pub(crate) async fn trace(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Span>>, Refusal> {
    if crate::store::trace_id(&id).is_none() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("trace id {id:?} is not 16 or 32 hex digits"),
        ));
    }
    store
        .trace(&id)
        .map(Json)
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, format!("trace {id} not found")))
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(query: Params) -> Result<HashMap<String, String>, Refusal> {
    query
        .map(|Query(params)| params)
        .map_err(|rejection| refuse(StatusCode::BAD_REQUEST, rejection.body_text()))
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Refusal> {
    params
        .get(name)
        .filter(|raw| !raw.is_empty())
        .map(|raw| {
            raw.parse::<u64>().map_err(|_| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("{name} must be a whole number, not {raw:?}"),
                )
            })
        })
        .transpose()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The parameters of `GET /api/v2/traces` (and of the trace list page), checked.
pub(crate) fn trace_query(
    params: &HashMap<String, String>,
    default_limit: usize,
) -> Result<TraceQuery, Refusal> {
    if params.contains_key("annotationQuery") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "annotationQuery (search by tags) is not supported by this in-memory store",
        ));
    }
    let limit = match number(params, "limit")? {
        None => default_limit,
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let name = |key: &str| {
        params
            .get(key)
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty() && s != "all")
    };
    Ok(TraceQuery {
        service_name: name("serviceName"),
        span_name: name("spanName"),
        min_duration: number(params, "minDuration")?,
        max_duration: number(params, "maxDuration")?,
        end_ts: number(params, "endTs")?.unwrap_or_else(now_ms),
        lookback: number(params, "lookback")?.unwrap_or(DEFAULT_LOOKBACK_MS),
        limit,
    })
}

/// `GET /api/v2/traces`: newest first.
pub(crate) async fn traces(
    State(store): State<Store>,
    query: Params,
) -> Result<Json<Vec<Vec<Span>>>, Refusal> {
    let query = trace_query(&params(query)?, DEFAULT_LIMIT)?;
    Ok(Json(store.traces(&query)))
}

/// `GET /api/v2/services`.
pub(crate) async fn services(State(store): State<Store>) -> Json<Vec<String>> {
    Json(store.services())
}

fn required_service(query: Params) -> Result<String, Refusal> {
    params(query)?
        .get("serviceName")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "serviceName is required"))
}

/// `GET /api/v2/spans?serviceName=`: the span names of a service.
pub(crate) async fn span_names(
    State(store): State<Store>,
    query: Params,
) -> Result<Json<Vec<String>>, Refusal> {
    Ok(Json(store.span_names(&required_service(query)?)))
}

/// `GET /api/v2/remoteServices?serviceName=`.
pub(crate) async fn remote_services(
    State(store): State<Store>,
    query: Params,
) -> Result<Json<Vec<String>>, Refusal> {
    Ok(Json(store.remote_services(&required_service(query)?)))
}

/// `GET /health`, shaped like Zipkin's, with how full the store is.
pub(crate) async fn health(State(store): State<Store>) -> Response {
    Json(json!({
        "status": "UP",
        "zipkin": {
            "status": "UP",
            "details": { "InMemoryStorage": { "status": "UP", "usage": store.usage() } }
        }
    }))
    .into_response()
}
