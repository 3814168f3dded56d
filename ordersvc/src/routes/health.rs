//! Liveness, readiness and the OpenAPI document.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;

/// A readiness probe answers within this, whatever the dependencies do.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when ordersdb answers `SELECT 1` and the event store answers a read (which also reaches
/// its database); 503 naming what is down otherwise.
#[tracing::instrument(skip_all)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let database = async {
        match tokio::time::timeout(
            READY_TIMEOUT,
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    };
    let event_store = async {
        // A read of the nil aggregate: cheap, always empty, and goes through the store's database.
        match tokio::time::timeout(READY_TIMEOUT, state.events.events(&Uuid::nil().to_string()))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    };
    let (database, event_store) = tokio::join!(database, event_store);
    let mut down = Vec::new();
    let mut checks = serde_json::Map::new();
    for (name, outcome) in [("ordersdb", database), ("eventstore", event_store)] {
        let shown = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(cause) => {
                tracing::warn!(dependency = name, %cause, "not ready");
                down.push(name);
                "down".to_owned()
            }
        };
        checks.insert(name.to_owned(), Value::String(shown));
    }
    if down.is_empty() {
        Json(json!({ "status": "ready", "checks": checks })).into_response()
    } else {
        let error = format!("not ready: {} down", down.join(" and "));
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error, "checks": checks })),
        )
            .into_response()
    }
}

pub async fn openapi(State(state): State<AppState>) -> Json<Value> {
    Json(state.openapi.as_ref().clone())
}
