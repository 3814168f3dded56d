//! `GET /api/orders/{id}/events`: the order's history, straight from the event store.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use orders_api::{ErrorBody, Event};

use super::read::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// An order's history from the event store
#[utoipa::path(
    get,
    path = "/api/orders/{id}/events",
    operation_id = "listOrderEvents",
    params(("id" = Uuid, Path, description = "The order id.")),
    responses(
        (status = 200, description = "Every event of the order, oldest first.", body = Vec<Event>),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 404, description = "The order has no events, or is another customer's.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(order.id))]
pub async fn order_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let order_id = path_id(path)?;
    tracing::Span::current().record("order.id", tracing::field::display(order_id));
    let events = state.events.events(&order_id.to_string()).await?;
    // Another customer's order has no events as far as this caller can tell.
    let reached = events.first().is_some_and(|created| {
        caller.only().is_none()
            || created.event_data["customer_id"]
                .as_str()
                .is_some_and(|customer| caller.reaches(customer))
    });
    if !reached {
        return Err(ApiError::NotFound(format!(
            "order {order_id} has no events"
        )));
    }
    let events = events
        .into_iter()
        .map(|event| Event {
            created_at: event.created_at,
            data: event.event_data,
            event_id: event.event_id,
            event_type: event.event_type,
            metadata: event.metadata,
            version: event.aggregate_version,
        })
        .collect();
    Ok(Json(events))
}
