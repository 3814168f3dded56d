//! `GET /api/orders/{id}/events`: the order's history, straight from the event store.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::create::rfc3339;
use super::read::path_id;
use crate::AppState;
use crate::error::ApiError;

#[tracing::instrument(skip_all, fields(order.id))]
pub async fn order_events(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let order_id = path_id(path)?;
    tracing::Span::current().record("order.id", tracing::field::display(order_id));
    let events = state.events.events(&order_id.to_string()).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound(format!(
            "order {order_id} has no events"
        )));
    }
    let events: Vec<Value> = events
        .into_iter()
        .map(|event| {
            json!({
                "event_id": event.event_id,
                "event_type": event.event_type,
                "version": event.aggregate_version,
                "data": event.event_data,
                "metadata": event.metadata,
                "created_at": rfc3339(event.created_at),
            })
        })
        .collect();
    Ok(Json(Value::Array(events)))
}
