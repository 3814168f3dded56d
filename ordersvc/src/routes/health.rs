//! Liveness, readiness and the OpenAPI document.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orders_api::{Alive, Check, Health, NotReady, Readiness, Ready};
use serde_json::Value;
use uuid::Uuid;

use crate::AppState;

/// A readiness probe answers within this, whatever the dependencies do.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    responses((status = 200, description = "The process is up.", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: Alive::Ok })
}

/// Readiness: the orders database and the event store answer
///
/// Ready when ordersdb answers `SELECT 1` and the event store answers a read (which also reaches
/// its database); 503 naming what is down otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "ready",
    responses(
        (status = 200, description = "Ready.", body = Ready),
        (status = 503, description = "A dependency is down; `checks` names it.", body = NotReady),
    )
)]
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
    let mut checks = BTreeMap::new();
    for (name, outcome) in [("ordersdb", database), ("eventstore", event_store)] {
        let shown = match outcome {
            Ok(()) => Check::Ok,
            Err(cause) => {
                tracing::warn!(dependency = name, %cause, "not ready");
                down.push(name);
                Check::Down
            }
        };
        checks.insert(name.to_owned(), shown);
    }
    if down.is_empty() {
        Json(Ready {
            checks,
            status: Readiness::Ready,
        })
        .into_response()
    } else {
        let error = format!("not ready: {} down", down.join(" and "));
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(NotReady { checks, error }),
        )
            .into_response()
    }
}

/// This document
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openApi",
    responses((status = 200, description = "The OpenAPI document.", body = Object))
)]
pub async fn openapi(State(state): State<AppState>) -> Json<Value> {
    Json(state.openapi.as_ref().clone())
}
