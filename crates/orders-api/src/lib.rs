#![doc = include_str!("../README.md")]

mod schema;

use std::collections::BTreeMap;

use order_domain::{Money, OrderStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use schema::{
    CURSOR_PATTERN, DEFAULT_CANCEL_REASON, DEFAULT_PAGE_LIMIT, MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_PAGE_LIMIT, MAX_REASON_CHARS, NON_BLANK_TEXT,
};

/// The header that makes `POST /api/orders` repeatable.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The query of `GET /api/orders`. (A parameter's description is in its schema: utoipa drops
/// a field's doc comment when `schema_with` writes the schema.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListOrdersQuery {
    // A literal (utoipa takes no constant here, and `schema_with` would lose `required`): a test
    // checks it is NON_BLANK_TEXT.
    #[param(
        min_length = 1,
        pattern = "^[^\\u0000]*[^\\s\\u0000\\u0085][^\\u0000]*$"
    )]
    pub customer_id: String,
    #[param(schema_with = schema::page_limit)]
    pub limit: Option<u32>,
    #[param(schema_with = schema::cursor)]
    pub after: Option<String>,
}

/// The query of `GET /api/orders/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetOrderQuery {
    #[param(schema_with = schema::min_version)]
    pub min_version: Option<i64>,
}

/// The headers of `POST /api/orders`.
#[derive(Debug, Clone, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CreateOrderHeaders {
    #[param(rename = "Idempotency-Key", schema_with = schema::idempotency_key)]
    pub idempotency_key: Option<String>,
}

// Response fields are declared in alphabetical order: the order serde_json's `json!` gave them
// when the handlers built their answers by hand, so the bytes on the wire stay the same.

/// The body of `POST /api/orders`, as a client builds it. The reference implementation's body is
/// one: `{"customer_id":"c1","restaurant_id":"r1","order_items":[{"code":"p1","name":"Pizza","unit_price":12.5,"quantity":2}]}`.
///
/// ordersvc does not decode requests through this type: it reads the body as JSON and checks every
/// field in `order_domain::NewOrder::parse`, so that a 422 names each wrong field where serde
/// would stop at the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderRequest {
    #[schema(schema_with = schema::text)]
    pub customer_id: String,
    #[schema(schema_with = schema::text)]
    pub restaurant_id: String,
    #[schema(schema_with = schema::request_items)]
    pub order_items: Vec<OrderItemRequest>,
}

/// One line of an [`OrderRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderItemRequest {
    #[schema(schema_with = schema::text)]
    pub code: String,
    #[schema(schema_with = schema::text)]
    pub name: String,
    #[schema(schema_with = schema::unit_price)]
    pub unit_price: UnitPrice,
    #[schema(schema_with = schema::quantity)]
    pub quantity: u32,
}

/// A unit price as a client sends it: a decimal string (`"12.50"`) or a JSON number (the
/// reference's `12.5`). It is sent as given: the API checks it exactly (at most two decimals, 0 to
/// 1,000,000), which a float on the client could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UnitPrice {
    Number(serde_json::Number),
    Text(String),
}

/// An item of an order as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderItem {
    pub code: String,
    pub name: String,
    pub quantity: u32,
    #[schema(schema_with = schema::money)]
    pub unit_price: Money,
}

impl From<&order_domain::OrderItem> for OrderItem {
    fn from(item: &order_domain::OrderItem) -> Self {
        OrderItem {
            code: item.code.clone(),
            name: item.name.clone(),
            quantity: item.quantity,
            unit_price: item.unit_price,
        }
    }
}

/// `201` of `POST /api/orders`: the order as its `created` event placed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedOrder {
    #[schema(schema_with = schema::money)]
    pub amount: Money,
    #[serde(with = "time::serde::rfc3339")]
    pub created_on: OffsetDateTime,
    pub customer_id: String,
    pub order_id: Uuid,
    pub order_items: Vec<OrderItem>,
    pub restaurant_id: String,
    /// Always `Pending`.
    #[schema(schema_with = schema::pending)]
    pub status: OrderStatus,
    /// Always 1.
    pub version: i64,
}

/// An order from the read model (`GET /api/orders/{id}`, the pages of `GET /api/orders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    #[schema(schema_with = schema::money)]
    pub amount: Money,
    #[serde(with = "time::serde::rfc3339")]
    pub created_on: OffsetDateTime,
    pub customer_id: String,
    pub order_id: Uuid,
    pub order_items: Vec<OrderItem>,
    /// Why the order was refused or cancelled.
    pub reason: Option<String>,
    /// A Rejected or Cancelled order's payment was given back.
    pub refunded: bool,
    pub restaurant_id: String,
    #[schema(schema_with = schema::status)]
    pub status: OrderStatus,
    /// The W3C trace id of the request that placed the order.
    pub trace_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The version of the last event the read model applied.
    pub version: i64,
}

/// `200` of `GET /api/orders`: one page, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
    pub orders: Vec<Order>,
}

/// One event of an order's history (`GET /api/orders/{id}/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The event's data as stored (see DESIGN.md for each type's fields).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub event_id: Uuid,
    pub event_type: String,
    /// `correlation_id`, `traceparent`, …
    pub metadata: BTreeMap<String, String>,
    pub version: i64,
}

/// The optional body of `POST /api/orders/{id}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CancelRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::reason)]
    pub reason: Option<String>,
}

/// `200` of `POST /api/orders/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    pub order_id: Uuid,
    /// Always `Cancelled`.
    #[schema(schema_with = schema::cancelled)]
    pub status: OrderStatus,
    pub version: i64,
}

/// Every error answer: `{"error": "..."}`, with `details` naming each wrong field of a 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        ErrorBody {
            details: Vec::new(),
            error: error.into(),
        }
    }
}

/// One wrong field of a request: its path (`order_items[2].quantity`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl From<order_domain::FieldError> for FieldError {
    fn from(error: order_domain::FieldError) -> Self {
        FieldError {
            field: error.field,
            message: error.message,
        }
    }
}

/// `200` of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: Alive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Alive {
    Ok,
}

/// `200` of `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Each dependency (`ordersdb`, `eventstore`) and how it answered.
    pub checks: BTreeMap<String, Check>,
    pub status: Readiness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    Ready,
}

/// `503` of `GET /readyz`: `checks` names what is down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NotReady {
    pub checks: BTreeMap<String, Check>,
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Ok,
    Down,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order_item() -> OrderItem {
        OrderItem {
            code: "p1".into(),
            name: "Pizza".into(),
            quantity: 2,
            unit_price: Money::from_cents(1250).expect("money"),
        }
    }

    #[test]
    fn money_and_times_are_strings_and_missing_texts_are_null() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let order = Order {
            amount: Money::from_cents(2500).expect("money"),
            created_on: at,
            customer_id: "c1".into(),
            order_id: Uuid::nil(),
            order_items: vec![order_item()],
            reason: None,
            refunded: false,
            restaurant_id: "r1".into(),
            status: OrderStatus::PaymentFailed,
            trace_id: None,
            updated_at: at,
            version: 2,
        };
        let text = serde_json::to_string(&order).expect("json");
        assert_eq!(
            text,
            r#"{"amount":"25.00","created_on":"2023-11-14T22:13:20Z","customer_id":"c1","order_id":"00000000-0000-0000-0000-000000000000","order_items":[{"code":"p1","name":"Pizza","quantity":2,"unit_price":"12.50"}],"reason":null,"refunded":false,"restaurant_id":"r1","status":"PaymentFailed","trace_id":null,"updated_at":"2023-11-14T22:13:20Z","version":2}"#
        );
        assert_eq!(serde_json::from_str::<Order>(&text).expect("back"), order);
    }

    #[test]
    fn the_reference_body_is_an_order_request() {
        let request: OrderRequest = serde_json::from_value(json!({"customer_id":"c1","restaurant_id":"r1","order_items":[{"code":"p1","name":"Pizza","unit_price":12.5,"quantity":2}]}))
            .expect("the reference's body");
        assert_eq!(
            serde_json::to_value(&request).expect("json")["order_items"][0]["unit_price"],
            json!(12.5)
        );
    }

    #[test]
    fn the_customer_id_parameter_is_required_non_blank_text() {
        let parameters = serde_json::to_value(ListOrdersQuery::into_params(|| None)).expect("json");
        assert_eq!(parameters[0]["name"], "customer_id");
        assert_eq!(parameters[0]["required"], true);
        assert_eq!(parameters[0]["schema"]["pattern"], NON_BLANK_TEXT);
    }

    #[test]
    fn an_error_has_details_only_when_there_are_some() {
        assert_eq!(
            serde_json::to_string(&ErrorBody::new("no")).expect("json"),
            r#"{"error":"no"}"#
        );
        let health = serde_json::to_string(&Health { status: Alive::Ok }).expect("json");
        assert_eq!(health, r#"{"status":"ok"}"#);
    }
}
