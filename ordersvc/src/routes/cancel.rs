//! `POST /api/orders/{id}/cancel`: decided on the order folded from its events, appended with the
//! version it was decided on, so a worker that moved the order on first wins and the cancel is
//! decided again on the new state. Cancelling an order that is already Cancelled answers 200 again
//! and appends nothing, so a client may retry a cancel whose answer it lost.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use order_domain::{Order, OrderStatus, Refusal};
use orders_api::{CancelRequest, Cancelled, DEFAULT_CANCEL_REASON, ErrorBody, MAX_REASON_CHARS};
use pipeline_runtime::eventstore::ClientError;
use pipeline_runtime::orders::{self, Cause, History};
use serde_json::Value;
use uuid::Uuid;

use super::read::path_id;
use crate::AppState;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// Decisions made before giving up on an order that keeps changing under us.
const ATTEMPTS: u32 = 3;

/// Cancel a Pending or Paid order
#[utoipa::path(
    post,
    path = "/api/orders/{id}/cancel",
    operation_id = "cancelOrder",
    params(("id" = Uuid, Path, description = "The order id.")),
    // Optional: `api` marks it so (utoipa would make an `Option` body a nullable one, and a
    // `null` body is a 422).
    request_body(content = CancelRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The order was cancelled (or already was: a repeated cancel appends nothing).", body = Cancelled),
        (status = 400, description = "The id is not a UUID, or the body is malformed JSON.", body = ErrorBody),
        (status = 404, description = "No such order, or another customer's.", body = ErrorBody),
        (status = 409, description = "Too late: the order is past Paid.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "A body was sent that is not application/json.", body = ErrorBody),
        (status = 422, description = "The reason is not a non-blank string of at most 500 characters without U+0000, or the body is not a JSON object.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(order.id))]
pub async fn cancel_order(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    request_headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Cancelled>, ApiError> {
    let order_id = path_id(path)?;
    tracing::Span::current().record("order.id", tracing::field::display(order_id));
    let reason = reason(body::optional_json(&request_headers, body)?)?;

    for attempt in 1..=ATTEMPTS {
        let order = load(&state, order_id).await?;
        if !caller.reaches(&order.customer_id) {
            // Exactly the answer for an order that does not exist: existence is not leaked.
            return Err(not_found(order_id));
        }
        if order.status == OrderStatus::Cancelled {
            return Ok(cancelled(order_id, order.version));
        }
        let event = order
            .cancel(reason.clone())
            .map_err(|refusal| match refusal {
                Refusal::TooLate { status } => {
                    ApiError::Conflict(format!("too late to cancel: the order is {status}"))
                }
                other => ApiError::Conflict(other.to_string()),
            })?;
        let append = orders::new_event(Uuid::new_v4(), &event, Cause::Request);
        match state.events.append(append, order.version).await {
            Ok(appended) => {
                return Ok(cancelled(order_id, appended.version));
            }
            Err(ClientError::Conflict(message)) => {
                tracing::info!(attempt, %message, "the order changed while cancelling; deciding again");
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(ApiError::Conflict(
        "the order kept changing while it was being cancelled; try again".into(),
    ))
}

fn cancelled(order_id: Uuid, version: i64) -> Json<Cancelled> {
    Json(Cancelled {
        order_id,
        status: OrderStatus::Cancelled,
        version,
    })
}

/// The optional body, [`CancelRequest`], read by hand so that each way it can be wrong gets its
/// own answer.
fn reason(body: Option<Value>) -> Result<String, ApiError> {
    let reason = match body {
        None => return Ok(DEFAULT_CANCEL_REASON.to_owned()),
        Some(Value::Object(mut fields)) => fields.remove("reason"),
        Some(_) => {
            return Err(ApiError::invalid(
                "the body must be a JSON object such as {\"reason\": \"...\"}",
            ));
        }
    };
    match reason {
        None | Some(Value::Null) => Ok(DEFAULT_CANCEL_REASON.to_owned()),
        // U+0000 cannot be stored in the event's JSONB data (a 500 before).
        Some(Value::String(text))
            if !text.trim().is_empty()
                && text.chars().count() <= MAX_REASON_CHARS
                && !super::has_nul(&text) =>
        {
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(format!(
            "reason must be a non-blank string of at most {MAX_REASON_CHARS} characters, without NUL (U+0000)"
        ))),
    }
}

/// The order as its events make it; 404 when it has none.
async fn load(state: &AppState, order_id: Uuid) -> Result<Order, ApiError> {
    History::load(&state.events, &order_id.to_string())
        .await?
        .map(|history| history.order)
        .ok_or_else(|| not_found(order_id))
}

fn not_found(order_id: Uuid) -> ApiError {
    ApiError::NotFound(format!("order {order_id} not found"))
}
