#![doc = include_str!("../README.md")]

mod api;
mod store;
mod ui;

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use crate::api::MAX_BODY_BYTES;
pub use crate::store::{Annotation, Endpoint, Span, Store, TraceQuery, Usage};
pub use crate::ui::{render_index, render_trace};

/// Default bound of the store (`TRACESTORE_MAX_SPANS`): about 15,000 orders of 13 spans, some
/// 200 MB at most.
pub const DEFAULT_MAX_SPANS: usize = 200_000;

/// Zipkin's v2 API and the two pages over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/v2/spans", post(api::receive).get(api::span_names))
        .route("/api/v2/trace/{id}", get(api::trace))
        .route("/api/v2/traces", get(api::traces))
        .route("/api/v2/services", get(api::services))
        .route("/api/v2/remoteServices", get(api::remote_services))
        .route("/health", get(api::health))
        .route("/", get(ui::to_index))
        .route("/zipkin", get(ui::to_index))
        .route("/zipkin/", get(ui::index))
        .route("/zipkin/traces/{id}", get(ui::trace_page))
        // Above the largest body taken, so that the handler can say how large is too large.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(store)
}

/// Serves `store` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store))
        .with_graceful_shutdown(shutdown)
        .await
}
