//! Placing an order: the untrusted request body, parsed once into a [`NewOrder`] that cannot
//! be invalid.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::{OrderCreated, OrderItem};
use crate::money::{Money, MoneyError};

/// Limits of an order request.
pub mod limits {
    use crate::money::Money;

    /// Longest `customer_id`, `restaurant_id`, item `code` and item `name`, in characters.
    pub const MAX_TEXT_CHARS: usize = 64;
    pub const MAX_ITEMS: usize = 100;
    pub const MAX_QUANTITY: u32 = 1000;
    /// 1,000,000.00
    pub const MAX_UNIT_PRICE: Money = match Money::from_whole_units(1_000_000) {
        Some(max) => max,
        None => Money::ZERO,
    };
}

/// The body of `POST /api/orders`, as the client sent it:
/// `{"customer_id":"c1","restaurant_id":"r1","order_items":[{"code":"p1","name":"Pizza","unit_price":12.5,"quantity":2}]}`.
///
/// Every field is kept as raw JSON (missing ones as `null`) so that [`NewOrder::parse`] can
/// report every problem with its field path, where serde would stop at the first. Unknown
/// fields are ignored. Only a JSON object deserializes (serde's derive would also take an
/// array of the fields in order, which no client means).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OrderRequest {
    pub customer_id: Value,
    pub restaurant_id: Value,
    pub order_items: Value,
}

impl<'de> Deserialize<'de> for OrderRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = serde_json::Map::deserialize(deserializer)?;
        let mut take = |name: &str| fields.remove(name).unwrap_or(Value::Null);
        Ok(OrderRequest {
            customer_id: take("customer_id"),
            restaurant_id: take("restaurant_id"),
            order_items: take("order_items"),
        })
    }
}

/// One problem with a request: the field's path (`order_items[2].quantity`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

/// Every problem found in an order request (never empty). Displays as one sentence per field,
/// e.g. `order_items[0].quantity must be a whole number from 1 to 1000; customer_id is required`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidOrder {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A valid order that has not been placed yet. Only [`NewOrder::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    customer_id: String,
    restaurant_id: String,
    items: Vec<OrderItem>,
    amount: Money,
}

impl NewOrder {
    /// Checks every field of the request and computes `amount = Σ unit_price × quantity`
    /// exactly.
    pub fn parse(request: OrderRequest) -> Result<NewOrder, InvalidOrder> {
        let mut errors = Errors(Vec::new());
        let customer_id = errors.text("customer_id", request.customer_id);
        let restaurant_id = errors.text("restaurant_id", request.restaurant_id);
        let items = errors.items(request.order_items);

        let amount = items.as_ref().and_then(|items| {
            let total = items.iter().try_fold(Money::ZERO, |total, item| {
                total.checked_add(item.unit_price.checked_mul(item.quantity)?)
            });
            if total.is_none() {
                errors.push("order_items", "add up to an amount that is too large");
            }
            total
        });

        match (customer_id, restaurant_id, items, amount) {
            (Some(customer_id), Some(restaurant_id), Some(items), Some(amount))
                if errors.0.is_empty() =>
            {
                Ok(NewOrder {
                    customer_id,
                    restaurant_id,
                    items,
                    amount,
                })
            }
            _ => Err(InvalidOrder { errors: errors.0 }),
        }
    }

    pub fn customer_id(&self) -> &str {
        &self.customer_id
    }

    pub fn restaurant_id(&self) -> &str {
        &self.restaurant_id
    }

    pub fn items(&self) -> &[OrderItem] {
        &self.items
    }

    pub fn amount(&self) -> Money {
        self.amount
    }

    /// The `created` event that places this order. The id and time come from the caller, so
    /// that this stays pure (and an idempotent retry can reuse them).
    pub fn place(self, order_id: Uuid, created_on: OffsetDateTime) -> OrderCreated {
        OrderCreated {
            order_id,
            customer_id: self.customer_id,
            restaurant_id: self.restaurant_id,
            order_items: self.items,
            amount: self.amount,
            created_on,
        }
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn text(&mut self, field: &str, value: Value) -> Option<String> {
        let text = match value {
            Value::String(text) => text,
            Value::Null => {
                self.push(field, "is required");
                return None;
            }
            _ => {
                self.push(field, "must be a string");
                return None;
            }
        };
        if text.trim().is_empty() {
            self.push(field, "must not be blank");
            None
        } else if text.chars().count() > limits::MAX_TEXT_CHARS {
            self.push(
                field,
                format!("must be at most {} characters", limits::MAX_TEXT_CHARS),
            );
            None
        } else {
            Some(text)
        }
    }

    fn items(&mut self, value: Value) -> Option<Vec<OrderItem>> {
        const FIELD: &str = "order_items";
        let list = match value {
            Value::Array(list) => list,
            Value::Null => {
                self.push(FIELD, "is required");
                return None;
            }
            _ => {
                self.push(FIELD, "must be a list of items");
                return None;
            }
        };
        if list.is_empty() {
            self.push(FIELD, "must have at least 1 item");
            return None;
        }
        if list.len() > limits::MAX_ITEMS {
            // Checking thousands of items only to report them all would help nobody.
            self.push(
                FIELD,
                format!(
                    "must have at most {} items, not {}",
                    limits::MAX_ITEMS,
                    list.len()
                ),
            );
            return None;
        }
        let before = self.0.len();
        let items: Vec<Option<OrderItem>> = list
            .into_iter()
            .enumerate()
            .map(|(i, item)| self.item(&format!("{FIELD}[{i}]"), item))
            .collect();
        if self.0.len() > before {
            return None;
        }
        items.into_iter().collect()
    }

    fn item(&mut self, path: &str, value: Value) -> Option<OrderItem> {
        let Value::Object(mut fields) = value else {
            self.push(
                path,
                "must be an object with code, name, unit_price and quantity",
            );
            return None;
        };
        let mut take = |name: &str| fields.remove(name).unwrap_or(Value::Null);
        let (code, name, unit_price, quantity) = (
            take("code"),
            take("name"),
            take("unit_price"),
            take("quantity"),
        );
        let code = self.text(&format!("{path}.code"), code);
        let name = self.text(&format!("{path}.name"), name);
        let unit_price = self.unit_price(&format!("{path}.unit_price"), unit_price);
        let quantity = self.quantity(&format!("{path}.quantity"), quantity);
        Some(OrderItem {
            code: code?,
            name: name?,
            unit_price: unit_price?,
            quantity: quantity?,
        })
    }

    fn unit_price(&mut self, field: &str, value: Value) -> Option<Money> {
        let price = match value {
            Value::Null => {
                self.push(field, "is required");
                return None;
            }
            Value::Number(_) | Value::String(_) => Money::from_json(&value),
            _ => Err(MoneyError::NotADecimal),
        };
        match price {
            Ok(price) if price <= limits::MAX_UNIT_PRICE => Some(price),
            Ok(_) => {
                self.push(field, format!("must be at most {}", limits::MAX_UNIT_PRICE));
                None
            }
            Err(error) => {
                self.push(field, error.to_string());
                None
            }
        }
    }

    fn quantity(&mut self, field: &str, value: Value) -> Option<u32> {
        let range = format!("must be a whole number from 1 to {}", limits::MAX_QUANTITY);
        let quantity = match &value {
            Value::Null => {
                self.push(field, "is required");
                return None;
            }
            Value::Number(n) => n
                .as_u64()
                // A client may write 2.0; that is still the whole number 2.
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                }),
            _ => None,
        };
        match quantity.and_then(|q| u32::try_from(q).ok()) {
            Some(q) if (1..=limits::MAX_QUANTITY).contains(&q) => Some(q),
            _ => {
                self.push(field, range);
                None
            }
        }
    }
}
