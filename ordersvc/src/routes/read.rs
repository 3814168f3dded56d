//! `GET /api/orders/{id}` and `GET /api/orders?customer_id=…`: the read model that
//! querymodelworker keeps in ordersdb. This service only reads it.

use std::collections::HashMap;
use std::pin::pin;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use order_domain::{Money, OrderStatus};
use order_readmodel::{ORDER_COLUMNS, OrderRow};
use orders_api::{
    DEFAULT_PAGE_LIMIT, ErrorBody, GetOrderQuery, ListOrdersQuery, MAX_PAGE_LIMIT, Order,
    OrderItem, OrderPage,
};
use pipeline_runtime::db;
use rust_decimal::Decimal;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::time::Instant;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::moves::Watch;

/// Set on an answer older than the `min_version` the client asked for.
pub const STALE_HEADER: &str = "x-read-model-stale";
const DEFAULT_LIMIT: i64 = DEFAULT_PAGE_LIMIT as i64;
const MAX_LIMIT: i64 = MAX_PAGE_LIMIT as i64;

#[derive(Debug, sqlx::FromRow)]
struct ItemRow {
    order_id: Uuid,
    code: String,
    name: String,
    unit_price: Decimal,
    quantity: i64,
}

pub(super) fn path_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(raw) = path.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    super::order_id(&raw)
}

fn query_params(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(params)| params)
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
}

/// An order from the read model
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    operation_id = "getOrder",
    params(("id" = Uuid, Path, description = "The order id."), GetOrderQuery),
    responses(
        (status = 200, description = "The order.", body = Order,
            headers(("X-Read-Model-Stale" = String, description = "true when the read model had not reached min_version in time"))),
        (status = 400, description = "The id is not a UUID, or min_version is not a whole number of at least 1.", body = ErrorBody),
        (status = 404, description = "No such order in the read model, or another customer's.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(order.id))]
pub async fn get_order(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let order_id = path_id(path)?;
    tracing::Span::current().record("order.id", tracing::field::display(order_id));
    let params = query_params(query)?;
    let min_version = match params.get("min_version") {
        None => None,
        Some(raw) => Some(raw.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::BadRequest("min_version must be a whole number of at least 1".into())
        })?),
    };

    // Waiting for a version: woken by the read-model notice of this order (or, if that got lost,
    // by the slow re-read), then read once more. The watch starts at the first read that finds
    // the order behind: only then are the notices followed.
    let mut watch: Option<Watch> = None;
    let deadline = Instant::now() + state.min_version_wait;
    loop {
        let follow_until = {
            let mut notified = pin!(watch.as_ref().map(Watch::notified));
            if let Some(notified) = notified.as_mut().as_pin_mut() {
                // Registered before the read: a notice that lands during it still wakes us.
                notified.enable();
            }
            // Another customer's order is missing as far as this caller can tell, down to the
            // `min_version` wait that a missing order waits out.
            let found = db::retry(|| fetch_order(&state.db, order_id))
                .await?
                .filter(|(row, _)| caller.reaches(&row.customer_id));
            let caught_up = match (&found, min_version) {
                (_, None) => true,
                (Some((row, _)), Some(wanted)) => row.version >= wanted,
                (None, Some(_)) => false,
            };
            let now = Instant::now();
            if caught_up || now >= deadline {
                let Some((row, items)) = found else {
                    return Err(ApiError::NotFound(format!("order {order_id} not found")));
                };
                let mut response = Json(order_view(row, items)?).into_response();
                if !caught_up {
                    response
                        .headers_mut()
                        .insert(STALE_HEADER, HeaderValue::from_static("true"));
                }
                return Ok(response);
            }
            let reread = now + state.min_version_reread.min(deadline - now);
            match notified.as_pin_mut() {
                Some(notified) => {
                    let _asleep = state.moves.asleep();
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(reread) => {}
                    }
                    None
                }
                None => Some(reread),
            }
        };
        if let Some(until) = follow_until {
            // First found behind. A notice sent before the notices were followed has passed us
            // by: read again once they are (or once the re-read is due, if NATS is away).
            let started = state.moves.watch(order_id);
            let _ = tokio::time::timeout_at(until, started.followed()).await;
            watch = Some(started);
        }
    }
}

/// A customer's orders, newest first
#[utoipa::path(
    get,
    path = "/api/orders",
    operation_id = "listOrders",
    params(ListOrdersQuery),
    responses(
        (status = 200, description = "One page of orders. A customer's token lists only that customer's orders: a customer_id naming another customer answers an empty page.", body = OrderPage),
        (status = 400, description = "customer_id missing, or a bad limit or cursor.", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn list_orders(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let params = query_params(query)?;
    let customer_id = params
        .get("customer_id")
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("customer_id is required".into()))?;
    if super::has_nul(customer_id) {
        // PostgreSQL refuses U+0000 in a text parameter (a 500 before); no order can have it.
        return Err(ApiError::BadRequest(
            "customer_id must not contain the NUL character (U+0000)".into(),
        ));
    }
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let after = params
        .get("after")
        .map(|cursor| {
            Cursor::decode(cursor).ok_or_else(|| {
                ApiError::BadRequest("after is not a cursor this API handed out".into())
            })
        })
        .transpose()?;

    if !caller.reaches(customer_id) {
        // A customer lists only their own orders: another's list is empty, as for a customer
        // without orders, whether or not that customer has any.
        return Ok(Json(OrderPage {
            next: None,
            orders: Vec::new(),
        }));
    }
    let (mut rows, items) =
        db::retry(|| fetch_page(&state.db, customer_id, after.as_ref(), limit + 1)).await?;
    // One row more than asked says whether another page follows.
    let next = if rows.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows.last().map(|row| {
            Cursor {
                created_on: row.created_on,
                order_id: row.order_id,
            }
            .encode()
        })
    } else {
        None
    };
    let mut items_by_order: HashMap<Uuid, Vec<ItemRow>> = HashMap::new();
    for item in items {
        items_by_order.entry(item.order_id).or_default().push(item);
    }
    let orders = rows
        .into_iter()
        .map(|row| {
            let items = items_by_order.remove(&row.order_id).unwrap_or_default();
            order_view(row, items)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(OrderPage { next, orders }))
}

/// The order and its items, read in one transaction so they belong together.
#[tracing::instrument(name = "SELECT ordersdb.orders", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT", db.collection.name = "orders", order.id = %order_id))]
async fn fetch_order(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<(OrderRow, Vec<ItemRow>)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.commit().await?;
        return Ok(None);
    };
    let items: Vec<ItemRow> = sqlx::query_as(
        "SELECT order_id, code, name, unit_price, quantity FROM order_items \
         WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some((row, items)))
}

/// One page of a customer's orders, newest first, after `after` if given.
#[tracing::instrument(name = "SELECT ordersdb.orders", skip_all, fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT", db.collection.name = "orders"))]
async fn fetch_page(
    pool: &PgPool,
    customer_id: &str,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<OrderRow>, Vec<ItemRow>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<OrderRow> = match after {
        None => {
            sqlx::query_as(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = $1 \
                 ORDER BY created_on DESC, order_id DESC LIMIT $2"
            ))
            .bind(customer_id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?
        }
        Some(cursor) => {
            sqlx::query_as(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = $1 \
                 AND (created_on, order_id) < ($2, $3) \
                 ORDER BY created_on DESC, order_id DESC LIMIT $4"
            ))
            .bind(customer_id)
            .bind(cursor.created_on)
            .bind(cursor.order_id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?
        }
    };
    let ids: Vec<Uuid> = rows.iter().map(|row| row.order_id).collect();
    let items: Vec<ItemRow> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT order_id, code, name, unit_price, quantity FROM order_items \
             WHERE order_id = ANY($1) ORDER BY order_id, line_no",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
    };
    tx.commit().await?;
    Ok((rows, items))
}

fn money(value: Decimal, what: &str) -> Result<Money, ApiError> {
    Money::try_from(value).map_err(|error| {
        anyhow::anyhow!("the read model holds an invalid {what} {value}: {error}").into()
    })
}

fn order_view(row: OrderRow, items: Vec<ItemRow>) -> Result<Order, ApiError> {
    let order_items = items
        .into_iter()
        .map(|item| {
            Ok(OrderItem {
                quantity: u32::try_from(item.quantity).map_err(|_| {
                    anyhow::anyhow!("the read model holds an invalid quantity {}", item.quantity)
                })?,
                unit_price: money(item.unit_price, "unit price")?,
                code: item.code,
                name: item.name,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Order {
        amount: money(row.amount, "amount")?,
        created_on: row.created_on,
        status: row
            .status
            .parse::<OrderStatus>()
            .map_err(|error| anyhow::anyhow!("the read model holds {error}"))?,
        customer_id: row.customer_id,
        order_id: row.order_id,
        order_items,
        reason: row.reason,
        refunded: row.refunded,
        restaurant_id: row.restaurant_id,
        trace_id: row.trace_id,
        updated_at: row.updated_at,
        version: row.version,
    })
}

/// Where a page ended: the last order's (created_on, order_id). Handed out as opaque hex so
/// clients do not build their own.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    created_on: OffsetDateTime,
    order_id: Uuid,
}

impl Cursor {
    fn encode(&self) -> String {
        let plain = format!(
            "{}|{}",
            self.created_on.unix_timestamp_nanos(),
            self.order_id
        );
        plain.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(cursor: &str) -> Option<Cursor> {
        if !cursor.len().is_multiple_of(2) || cursor.len() > 200 {
            return None;
        }
        let bytes = (0..cursor.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let plain = String::from_utf8(bytes).ok()?;
        let (nanos, id) = plain.split_once('|')?;
        Some(Cursor {
            created_on: OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?,
            order_id: Uuid::parse_str(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_encoded() {
        let cursor = Cursor {
            created_on: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .expect("time"),
            order_id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode("abc"), None);
    }
}
