//! `POST /api/orders`: a valid order becomes an `ORDERS.created` event at version 1.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use order_domain::{
    FieldError, NewOrder, OrderCreated, OrderEvent, OrderRequest, OrderStatus, caused_event_id,
    event_type,
};
use orders_api::{CreatedOrder, ErrorBody, MAX_IDEMPOTENCY_KEY_CHARS, OrderItem};
use pipeline_runtime::eventstore::ClientError;
use pipeline_runtime::orders::{self, Cause, History};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// Namespace of order ids derived from an `Idempotency-Key`. Never change it: a client retrying
/// across a deployment must get the same order.
const IDEMPOTENT_ORDER_NAMESPACE: Uuid = Uuid::from_u128(0x8d3f_51a2_6c0e_4b7d_a915_3e2f_4c6b_7d80);

/// Place an order
///
/// Appends an ORDERS.created event at version 1. Bodies above 64 KiB are refused.
#[utoipa::path(
    post,
    path = "/api/orders",
    operation_id = "createOrder",
    params(orders_api::CreateOrderHeaders),
    request_body(content = orders_api::OrderRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The order was placed (or, for a retried Idempotency-Key, had been).",
            body = CreatedOrder, headers(("Location" = String, description = "/api/orders/{id}"))),
        (status = 400, description = "Malformed JSON or Idempotency-Key.", body = ErrorBody),
        (status = 403, description = "A customer's token with another customer's customer_id: a customer orders only in their own name (without customer_id, the token's is taken).", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not application/json.", body = ErrorBody),
        (status = 422, description = "The order is invalid (details name each field), or the Idempotency-Key was used with a different order.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(order.id))]
pub async fn create_order(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request_headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&request_headers)?;
    let value = body::json(&request_headers, body)?;
    let mut request = order_request(value)?;
    in_own_name(&caller, &mut request)?;
    let new_order = NewOrder::parse(request).map_err(|invalid| ApiError::Invalid {
        message: invalid.to_string(),
        details: invalid.errors,
    })?;
    refuse_nul(&new_order)?;

    let order_id = match &key {
        Some(key) => idempotent_order_id(new_order.customer_id(), key),
        None => Uuid::new_v4(),
    };
    tracing::Span::current().record("order.id", tracing::field::display(order_id));
    let created = new_order.place(order_id, now());
    let event = OrderEvent::Created(created.clone());
    let append = orders::new_event(
        caused_event_id(order_id, event_type::CREATED),
        &event,
        Cause::Request,
    );
    match state.events.append(append, 0).await {
        Ok(_) => Ok(answer(&created)),
        // Only a key makes the id repeatable, so only a retry with a key lands here: the first
        // attempt's order is stored under the same ids.
        Err(ClientError::AlreadyExists(_) | ClientError::Conflict(_)) if key.is_some() => {
            let stored = stored_created(&state, order_id).await?;
            if same_order(&stored, &created) {
                tracing::info!("idempotent retry answered with the stored order");
                Ok(answer(&stored))
            } else {
                Err(ApiError::invalid(
                    "Idempotency-Key was already used with a different request",
                ))
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// The order id of `customer`'s `Idempotency-Key`: keys are scoped per customer, so one customer's
/// key neither finds nor blocks another's order (nor tells that it was used). The customer id is
/// length-prefixed so that no (customer, key) pair reads as another.
fn idempotent_order_id(customer: &str, key: &str) -> Uuid {
    let name = format!("{}:{customer}{key}", customer.len());
    Uuid::new_v5(&IDEMPOTENT_ORDER_NAMESPACE, name.as_bytes())
}

/// Microseconds: what a TIMESTAMPTZ column keeps, so the read model shows the same instant.
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

fn idempotency_key(request_headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = request_headers.get(orders_api::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters"
        ))
    };
    let key = std::str::from_utf8(value.as_bytes()).map_err(|_| invalid())?;
    let printable = key.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if key.trim().is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS || !printable {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// A customer orders in their own name: a missing `customer_id` becomes theirs, another one is a
/// 403. Operators (and an open API) name any customer.
fn in_own_name(caller: &Caller, request: &mut OrderRequest) -> Result<(), ApiError> {
    let Some(own) = caller.only() else {
        return Ok(());
    };
    match &request.customer_id {
        Value::Null => {
            request.customer_id = Value::from(own);
            Ok(())
        }
        Value::String(named) if named != own => Err(ApiError::Forbidden(
            "a customer places orders only in their own name: customer_id must be the token's \
             subject, or left out"
                .to_owned(),
        )),
        // Their own id, or no text at all, which the domain refuses as invalid.
        _ => Ok(()),
    }
}

/// 422 naming each text field that holds U+0000, which the event store's JSONB cannot keep (it
/// was a 500 "internal error in the event store" before).
fn refuse_nul(order: &NewOrder) -> Result<(), ApiError> {
    let mut fields = vec![
        ("customer_id".to_owned(), order.customer_id()),
        ("restaurant_id".to_owned(), order.restaurant_id()),
    ];
    for (i, item) in order.items().iter().enumerate() {
        fields.push((format!("order_items[{i}].code"), item.code.as_str()));
        fields.push((format!("order_items[{i}].name"), item.name.as_str()));
    }
    let details: Vec<FieldError> = fields
        .into_iter()
        .filter(|(_, text)| super::has_nul(text))
        .map(|(field, _)| FieldError {
            field,
            message: "must not contain the NUL character (U+0000)".to_owned(),
        })
        .collect();
    if details.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        message: "the order is invalid".to_owned(),
        details,
    })
}

/// Only a JSON object is an order request; everything inside it is checked by the domain.
fn order_request(value: Value) -> Result<OrderRequest, ApiError> {
    serde_json::from_value(value)
        .map_err(|_| ApiError::invalid("the body must be a JSON object describing the order"))
}

async fn stored_created(state: &AppState, order_id: Uuid) -> Result<OrderCreated, ApiError> {
    let history = History::load(&state.events, &order_id.to_string())
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "order {order_id}: the event store refused the created event but holds no event"
            )
        })?;
    // A history folds only when it starts with `created` (the domain refuses any other start).
    match history.events.into_iter().next() {
        Some((_, OrderEvent::Created(created))) => Ok(created),
        _ => Err(anyhow::anyhow!("order {order_id} does not start with its created event").into()),
    }
}

/// The same order as far as the client is concerned: time and id are ours, not the client's.
fn same_order(stored: &OrderCreated, requested: &OrderCreated) -> bool {
    stored.customer_id == requested.customer_id
        && stored.restaurant_id == requested.restaurant_id
        && stored.order_items == requested.order_items
}

fn answer(created: &OrderCreated) -> Response {
    let location = format!("/api/orders/{}", created.order_id);
    let mut response = (StatusCode::CREATED, Json(created_view(created))).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The order as its `created` event placed it.
fn created_view(created: &OrderCreated) -> CreatedOrder {
    CreatedOrder {
        amount: created.amount,
        created_on: created.created_on,
        customer_id: created.customer_id.clone(),
        order_id: created.order_id,
        order_items: created.order_items.iter().map(OrderItem::from).collect(),
        restaurant_id: created.restaurant_id.clone(),
        status: OrderStatus::Pending,
        version: 1,
    }
}
