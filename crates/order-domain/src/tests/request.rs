//! Placing an order: each limit at and over its edge, with the field path in the message.

use serde_json::{Value, json};

use super::given::*;
use crate::{FieldError, NewOrder, OrderRequest, OrderStatus, limits};

fn request(body: Value) -> OrderRequest {
    serde_json::from_value(body).expect("the body has the request's shape")
}

fn valid_body() -> Value {
    json!({
        "customer_id": "c1",
        "restaurant_id": "r1",
        "order_items": [{"code": "p1", "name": "Pizza", "unit_price": 12.5, "quantity": 2}]
    })
}

fn parse(body: Value) -> Result<NewOrder, Vec<FieldError>> {
    NewOrder::parse(request(body)).map_err(|invalid| invalid.errors)
}

/// The one error of `body`, as `field message`.
fn error_of(body: Value) -> String {
    match parse(body) {
        Ok(order) => panic!("expected a refusal, got {order:?}"),
        Err(errors) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            errors[0].to_string()
        }
    }
}

fn with_item(field: &str, value: Value) -> Value {
    let mut body = valid_body();
    body["order_items"][0][field] = value;
    body
}

#[test]
fn the_reference_request_body_places_an_order() {
    let new_order = parse(valid_body()).expect("valid");
    assert_eq!(new_order.customer_id(), "c1");
    assert_eq!(new_order.restaurant_id(), "r1");
    assert_eq!(new_order.amount(), money("25.00"));
    let created = new_order.place(ORDER_ID, at());
    assert_eq!(crate::OrderEvent::from(created), created_for(ORDER_ID));
}

#[test]
fn a_placed_order_starts_pending() {
    let created = parse(valid_body()).expect("valid").place(ORDER_ID, at());
    let order = crate::Order::from_created(&created);
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.version, 1);
}

#[test]
fn the_amount_is_the_exact_sum_of_the_lines() {
    let body = json!({
        "customer_id": "c1",
        "restaurant_id": "r1",
        "order_items": [
            {"code": "a", "name": "A", "unit_price": 0.1, "quantity": 3},
            {"code": "b", "name": "B", "unit_price": "19.99", "quantity": 1},
            {"code": "c", "name": "C", "unit_price": 0, "quantity": 1000}
        ]
    });
    assert_eq!(parse(body).expect("valid").amount(), money("20.29"));
}

#[test]
fn the_largest_order_is_exact() {
    let item = json!({"code": "p", "name": "P", "unit_price": "1000000.00", "quantity": 1000});
    let body = json!({"customer_id": "c", "restaurant_id": "r", "order_items": vec![item; 100]});
    assert_eq!(
        parse(body).expect("valid").amount(),
        money("100000000000.00")
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let mut body = valid_body();
    body["coupon"] = json!("FREE");
    body["order_items"][0]["spicy"] = json!(true);
    assert!(parse(body).is_ok());
}

#[test]
fn missing_fields_are_required() {
    assert_eq!(
        parse(json!({})).expect_err("invalid"),
        vec![
            FieldError {
                field: "customer_id".into(),
                message: "is required".into()
            },
            FieldError {
                field: "restaurant_id".into(),
                message: "is required".into()
            },
            FieldError {
                field: "order_items".into(),
                message: "is required".into()
            },
        ]
    );
    assert_eq!(
        error_of(with_item("quantity", Value::Null)),
        "order_items[0].quantity is required"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let body = json!({
        "customer_id": "",
        "restaurant_id": 7,
        "order_items": [
            {"code": "p1", "name": "Pizza", "unit_price": 1, "quantity": 1},
            {"code": "p2", "name": "", "unit_price": "1.001", "quantity": 0}
        ]
    });
    let message = NewOrder::parse(request(body))
        .expect_err("invalid")
        .to_string();
    assert_eq!(
        message,
        "customer_id must not be blank; restaurant_id must be a string; \
         order_items[1].name must not be blank; \
         order_items[1].unit_price must have at most 2 decimal places; \
         order_items[1].quantity must be a whole number from 1 to 1000"
    );
}

#[test]
fn ids_and_names_are_1_to_64_characters() {
    let at_limit = "x".repeat(limits::MAX_TEXT_CHARS);
    let over = "x".repeat(limits::MAX_TEXT_CHARS + 1);
    // Characters, not bytes.
    let wide_at_limit = "é".repeat(limits::MAX_TEXT_CHARS);
    for field in ["customer_id", "restaurant_id"] {
        for ok in [json!("a"), json!(at_limit), json!(wide_at_limit)] {
            let mut body = valid_body();
            body[field] = ok;
            assert!(parse(body).is_ok(), "{field}");
        }
        let mut body = valid_body();
        body[field] = json!(over);
        assert_eq!(
            error_of(body),
            format!("{field} must be at most 64 characters")
        );
        let mut body = valid_body();
        body[field] = json!("   ");
        assert_eq!(error_of(body), format!("{field} must not be blank"));
    }
    for field in ["code", "name"] {
        assert!(parse(with_item(field, json!(at_limit))).is_ok());
        assert_eq!(
            error_of(with_item(field, json!(over))),
            format!("order_items[0].{field} must be at most 64 characters")
        );
        assert_eq!(
            error_of(with_item(field, json!(""))),
            format!("order_items[0].{field} must not be blank")
        );
        assert_eq!(
            error_of(with_item(field, json!(5))),
            format!("order_items[0].{field} must be a string")
        );
    }
}

#[test]
fn an_order_has_1_to_100_items() {
    let item = valid_body()["order_items"][0].clone();
    let mut body = valid_body();
    body["order_items"] = json!(vec![item.clone(); limits::MAX_ITEMS]);
    assert_eq!(parse(body).expect("valid").items().len(), 100);

    let mut body = valid_body();
    body["order_items"] = json!(vec![item; limits::MAX_ITEMS + 1]);
    assert_eq!(
        error_of(body),
        "order_items must have at most 100 items, not 101"
    );

    let mut body = valid_body();
    body["order_items"] = json!([]);
    assert_eq!(error_of(body), "order_items must have at least 1 item");

    let mut body = valid_body();
    body["order_items"] = json!({"code": "p1"});
    assert_eq!(error_of(body), "order_items must be a list of items");

    let mut body = valid_body();
    body["order_items"] = json!([valid_body()["order_items"][0], "pizza"]);
    assert_eq!(
        error_of(body),
        "order_items[1] must be an object with code, name, unit_price and quantity"
    );
}

#[test]
fn the_field_path_names_the_item() {
    let item = valid_body()["order_items"][0].clone();
    let mut bad = item.clone();
    bad["quantity"] = json!(1001);
    let mut body = valid_body();
    body["order_items"] = json!([item, item, bad]);
    assert_eq!(
        error_of(body),
        "order_items[2].quantity must be a whole number from 1 to 1000"
    );
}

#[test]
fn a_quantity_is_a_whole_number_from_1_to_1000() {
    for ok in [json!(1), json!(1000), json!(2.0)] {
        assert!(parse(with_item("quantity", ok.clone())).is_ok(), "{ok}");
    }
    for bad in [
        json!(0),
        json!(1001),
        json!(-1),
        json!(2.5),
        json!("2"),
        json!(4_294_967_297_u64),
        json!(1e300),
    ] {
        assert_eq!(
            error_of(with_item("quantity", bad.clone())),
            "order_items[0].quantity must be a whole number from 1 to 1000",
            "{bad}"
        );
    }
}

#[test]
fn a_unit_price_is_0_to_1_000_000_with_at_most_2_decimals() {
    for ok in [
        json!(0),
        json!("0.00"),
        json!(1_000_000),
        json!("1000000.00"),
        json!(999_999.99),
        json!("19.99"),
    ] {
        assert!(parse(with_item("unit_price", ok.clone())).is_ok(), "{ok}");
    }
    let field = "order_items[0].unit_price";
    for (bad, message) in [
        (json!("1000000.01"), "must be at most 1000000.00"),
        (json!(1_000_000.01), "must be at most 1000000.00"),
        (json!(12.345), "must have at most 2 decimal places"),
        (json!("12.345"), "must have at most 2 decimal places"),
        (json!(-1), "must not be negative"),
        (json!("-0.01"), "must not be negative"),
        (json!("twelve"), "must be a decimal number such as 12.50"),
        (json!(true), "must be a decimal number such as 12.50"),
    ] {
        assert_eq!(
            error_of(with_item("unit_price", bad.clone())),
            format!("{field} {message}"),
            "{bad}"
        );
    }
}

#[test]
fn a_body_that_is_not_an_object_does_not_deserialize() {
    assert!(serde_json::from_value::<OrderRequest>(json!([1, 2])).is_err());
}
