//! One SERVER span per HTTP request (OpenTelemetry HTTP conventions): it continues a caller's W3C
//! `traceparent`, and its own context goes back in the response's `traceparent` header, so a client
//! can find the trace of what it just did.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use pipeline_runtime::tracecontext::{self, HeaderExtractor, HeaderInjector};
use tracing::Instrument as _;
use tracing::field::Empty;

pub async fn server_span(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = matched.as_ref().map(MatchedPath::as_str);
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = Empty,
    );
    tracecontext::set_parent(&span, &HeaderExtractor(request.headers()));
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    // Client errors are the client's: only a 5xx fails the server span.
    if status.is_server_error() {
        tracecontext::mark_error(&span, status.to_string());
    }
    tracecontext::inject(&span, &mut HeaderInjector(response.headers_mut()));
    response
}
