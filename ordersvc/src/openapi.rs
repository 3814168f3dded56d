//! The OpenAPI 3 document, built from the same route table as the router.

use order_domain::limits;
use serde_json::{Map, Value, json};

use crate::error::RETRY_AFTER_SECS;
use crate::routes::{MAX_BODY_BYTES, Operation, ROUTES};

/// Text the service accepts: not blank (a character that is not white space, as Rust's
/// `str::trim` sees it: the regex `\s` plus U+0085) and without U+0000, which PostgreSQL cannot store.
pub const NON_BLANK_TEXT: &str = "^[^\\u0000]*[^\\s\\u0000\\u0085][^\\u0000]*$";

/// The `after` cursor exactly as `GET /api/orders` hands it out: the hex of
/// `<unix nanoseconds>|<order uuid>`, so any value of this shape is one the server can read.
pub const CURSOR_PATTERN: &str = concat!(
    "^(2d)?(3[0-9]){1,20}7c",
    "(3[0-9]|6[1-6]){8}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){12}$"
);

/// The document served at `GET /api/openapi.json`.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            let mut operation = operation(route.operation);
            if let Value::Object(fields) = &mut operation {
                fields.insert("operationId".into(), route.operation.id().into());
            }
            methods.insert(route.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "ordersvc",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The order API of the event-sourced order pipeline. Every error is JSON {\"error\": \"...\"}.",
        },
        "paths": paths,
        "components": components(),
    })
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } },
    })
}

fn id_parameter() -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "description": "The order id.",
        "schema": { "type": "string", "format": "uuid" },
    })
}

/// The 503 of every operation but the probes: a dependency is down, or the instance is at its
/// bound of requests in flight and refused this one before doing anything.
fn unavailable() -> Value {
    let mut response = error(
        "The event store or the orders database is unavailable, or too many requests are in flight (ORDERSVC_MAX_IN_FLIGHT). Nothing was written unless the event store's answer was lost: retry after Retry-After seconds, with the same Idempotency-Key.",
    );
    if let Value::Object(fields) = &mut response {
        fields.insert(
            "headers".into(),
            json!({ "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": { "type": "integer", "minimum": 0, "example": RETRY_AFTER_SECS },
            } }),
        );
    }
    response
}

fn operation(operation: Operation) -> Value {
    let unavailable = unavailable();
    match operation {
        Operation::CreateOrder => json!({
            "summary": "Place an order",
            "description": format!("Appends an ORDERS.created event at version 1. Bodies above {} KiB are refused.", MAX_BODY_BYTES / 1024),
            "parameters": [{
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "1 to 200 printable ASCII characters. A retry with the same key and order answers the stored order and appends nothing.",
                "schema": { "type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]*[!-~][ -~]*$" },
            }],
            "requestBody": {
                "required": true,
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OrderRequest" } } },
            },
            "responses": {
                "201": {
                    "description": "The order was placed (or, for a retried Idempotency-Key, had been).",
                    "headers": { "Location": { "description": "/api/orders/{id}", "schema": { "type": "string" } } },
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CreatedOrder" } } },
                },
                "400": error("Malformed JSON or Idempotency-Key."),
                "413": error("The body is too large."),
                "415": error("The body is not application/json."),
                "422": error("The order is invalid (details name each field), or the Idempotency-Key was used with a different order."),
                "503": unavailable,
            },
        }),
        Operation::ListOrders => json!({
            "summary": "A customer's orders, newest first",
            "parameters": [
                { "name": "customer_id", "in": "query", "required": true, "schema": { "type": "string", "minLength": 1, "pattern": NON_BLANK_TEXT } },
                { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 100, "default": 20 } },
                { "name": "after", "in": "query", "required": false, "description": "The `next` cursor of the previous page (opaque; its shape is given for validation only).", "schema": { "type": "string", "pattern": CURSOR_PATTERN } },
            ],
            "responses": {
                "200": ok("One page of orders.", "OrderPage"),
                "400": error("customer_id missing, or a bad limit or cursor."),
                "503": unavailable,
            },
        }),
        Operation::GetOrder => json!({
            "summary": "An order from the read model",
            "parameters": [
                id_parameter(),
                {
                    "name": "min_version", "in": "query", "required": false,
                    "description": "Wait briefly until the read model reached this version. Still behind: the order as it is, with X-Read-Model-Stale: true (404 when there is no row yet).",
                    "schema": { "type": "integer", "format": "int64", "minimum": 1, "maximum": i64::MAX },
                },
            ],
            "responses": {
                "200": {
                    "description": "The order.",
                    "headers": { "X-Read-Model-Stale": { "description": "true when the read model had not reached min_version in time", "schema": { "type": "string" } } },
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Order" } } },
                },
                "400": error("The id is not a UUID, or min_version is not a whole number of at least 1."),
                "404": error("No such order in the read model."),
                "503": unavailable,
            },
        }),
        Operation::OrderEvents => json!({
            "summary": "An order's history from the event store",
            "parameters": [id_parameter()],
            "responses": {
                "200": {
                    "description": "Every event of the order, oldest first.",
                    "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } } } },
                },
                "400": error("The id is not a UUID."),
                "404": error("The order has no events."),
                "503": unavailable,
            },
        }),
        Operation::CancelOrder => json!({
            "summary": "Cancel a Pending or Paid order",
            "parameters": [id_parameter()],
            "requestBody": {
                "required": false,
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CancelRequest" } } },
            },
            "responses": {
                "200": ok("The order was cancelled (or already was: a repeated cancel appends nothing).", "Cancelled"),
                "400": error("The id is not a UUID, or the body is malformed JSON."),
                "404": error("No such order."),
                "409": error("Too late: the order is past Paid."),
                "413": error("The body is too large."),
                "415": error("A body was sent that is not application/json."),
                "422": error("The reason is not a non-blank string of at most 500 characters without U+0000, or the body is not a JSON object."),
                "503": unavailable,
            },
        }),
        Operation::Health => json!({
            "summary": "Liveness",
            "responses": { "200": ok("The process is up.", "Health") },
        }),
        Operation::Ready => json!({
            "summary": "Readiness: the orders database and the event store answer",
            "responses": {
                "200": ok("Ready.", "Ready"),
                "503": error("A dependency is down; `checks` names it."),
            },
        }),
        Operation::OpenApi => json!({
            "summary": "This document",
            "responses": {
                "200": { "description": "The OpenAPI document.", "content": { "application/json": { "schema": { "type": "object" } } } },
                "503": unavailable,
            },
        }),
    }
}

fn components() -> Value {
    let text = json!({ "type": "string", "minLength": 1, "maxLength": limits::MAX_TEXT_CHARS, "pattern": NON_BLANK_TEXT });
    let money = json!({ "type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$", "example": "25.00" });
    let time = json!({ "type": "string", "format": "date-time" });
    let item = json!({
        "type": "object",
        "required": ["code", "name", "unit_price", "quantity"],
        "properties": {
            "code": text, "name": text, "unit_price": money,
            "quantity": { "type": "integer" },
        },
    });
    json!({
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": { "type": "string" },
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": { "field": { "type": "string" }, "message": { "type": "string" } },
                        },
                    },
                },
            },
            "OrderRequest": {
                "type": "object",
                "required": ["customer_id", "restaurant_id", "order_items"],
                "properties": {
                    "customer_id": text,
                    "restaurant_id": text,
                    "order_items": {
                        "type": "array", "minItems": 1, "maxItems": limits::MAX_ITEMS,
                        "items": { "$ref": "#/components/schemas/OrderItemRequest" },
                    },
                },
            },
            "OrderItemRequest": {
                "type": "object",
                "required": ["code", "name", "unit_price", "quantity"],
                "properties": {
                    "code": text,
                    "name": text,
                    "unit_price": {
                        "description": "A number or a decimal string, at most 2 decimals, from 0 to 1000000.",
                        "oneOf": [
                            { "type": "number", "minimum": 0, "maximum": 1_000_000 },
                            { "type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$" },
                        ],
                    },
                    "quantity": { "type": "integer", "minimum": 1, "maximum": limits::MAX_QUANTITY },
                },
            },
            "OrderItem": item,
            "CreatedOrder": {
                "type": "object",
                "properties": {
                    "order_id": { "type": "string", "format": "uuid" },
                    "customer_id": { "type": "string" },
                    "restaurant_id": { "type": "string" },
                    "status": { "type": "string", "enum": ["Pending"] },
                    "amount": money,
                    "created_on": time,
                    "order_items": { "type": "array", "items": { "$ref": "#/components/schemas/OrderItem" } },
                    "version": { "type": "integer" },
                },
            },
            "Order": {
                "type": "object",
                "properties": {
                    "order_id": { "type": "string", "format": "uuid" },
                    "customer_id": { "type": "string" },
                    "restaurant_id": { "type": "string" },
                    "status": { "type": "string", "enum": ["Pending", "Paid", "Approved", "PaymentFailed", "Rejected", "Cancelled"] },
                    "amount": money,
                    "refunded": { "type": "boolean" },
                    "version": { "type": "integer" },
                    "reason": { "type": "string", "nullable": true },
                    "trace_id": { "type": "string", "nullable": true },
                    "created_on": time,
                    "updated_at": time,
                    "order_items": { "type": "array", "items": { "$ref": "#/components/schemas/OrderItem" } },
                },
            },
            "OrderPage": {
                "type": "object",
                "properties": {
                    "orders": { "type": "array", "items": { "$ref": "#/components/schemas/Order" } },
                    "next": { "type": "string", "nullable": true, "description": "Pass as `after` for the next page; null on the last page." },
                },
            },
            "Event": {
                "type": "object",
                "properties": {
                    "event_id": { "type": "string", "format": "uuid" },
                    "event_type": { "type": "string" },
                    "version": { "type": "integer" },
                    "data": { "type": "object" },
                    "metadata": { "type": "object", "additionalProperties": { "type": "string" } },
                    "created_at": time,
                },
            },
            "CancelRequest": {
                "type": "object",
                "properties": { "reason": { "type": "string", "minLength": 1, "maxLength": 500, "pattern": NON_BLANK_TEXT, "default": "cancelled by customer" } },
            },
            "Cancelled": {
                "type": "object",
                "properties": {
                    "order_id": { "type": "string", "format": "uuid" },
                    "status": { "type": "string", "enum": ["Cancelled"] },
                    "version": { "type": "integer" },
                },
            },
            "Health": { "type": "object", "properties": { "status": { "type": "string", "enum": ["ok"] } } },
            "Ready": {
                "type": "object",
                "properties": {
                    "status": { "type": "string", "enum": ["ready"] },
                    "checks": { "type": "object", "additionalProperties": { "type": "string" } },
                },
            },
        },
    })
}
