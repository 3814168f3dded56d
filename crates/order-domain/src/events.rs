//! The facts of an order's life, named in the past tense. Their JSON shape is the contract
//! with every consumer of the `ORDERS` stream (DESIGN.md, "Events").

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::money::Money;

/// The aggregate type every order event is stored under.
pub const AGGREGATE_TYPE: &str = "order";

/// Event types: the stored `event_type` and the NATS subject suffix (`ORDERS.<event_type>`).
pub mod event_type {
    pub const CREATED: &str = "created";
    pub const PAYMENT_DEBITED: &str = "paymentdebited";
    pub const PAYMENT_FAILED: &str = "paymentfailed";
    pub const APPROVED: &str = "approved";
    pub const REJECTED: &str = "rejected";
    pub const CANCELLED: &str = "cancelled";
    pub const PAYMENT_REFUNDED: &str = "paymentrefunded";

    /// Every event type, in the order of an order's life.
    pub const ALL: [&str; 7] = [
        CREATED,
        PAYMENT_DEBITED,
        PAYMENT_FAILED,
        APPROVED,
        REJECTED,
        CANCELLED,
        PAYMENT_REFUNDED,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub code: String,
    pub name: String,
    pub unit_price: Money,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: String,
    pub restaurant_id: String,
    pub order_items: Vec<OrderItem>,
    pub amount: Money,
    #[serde(with = "rfc3339")]
    pub created_on: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDebited {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount: Money,
    pub payment_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount: Money,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    pub order_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub order_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub order_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount: Money,
    pub payment_id: Uuid,
}

/// Every event of the order aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Created(OrderCreated),
    PaymentDebited(PaymentDebited),
    PaymentFailed(PaymentFailed),
    Approved(Approved),
    Rejected(Rejected),
    Cancelled(Cancelled),
    PaymentRefunded(PaymentRefunded),
}

/// An event that could not be read back from its stored form.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown order event type `{0}`")]
    UnknownType(String),
    #[error("invalid data for order event `{event_type}`: {source}")]
    InvalidData {
        event_type: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl OrderEvent {
    /// The stored event type, also the NATS subject suffix.
    pub fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Created(_) => event_type::CREATED,
            OrderEvent::PaymentDebited(_) => event_type::PAYMENT_DEBITED,
            OrderEvent::PaymentFailed(_) => event_type::PAYMENT_FAILED,
            OrderEvent::Approved(_) => event_type::APPROVED,
            OrderEvent::Rejected(_) => event_type::REJECTED,
            OrderEvent::Cancelled(_) => event_type::CANCELLED,
            OrderEvent::PaymentRefunded(_) => event_type::PAYMENT_REFUNDED,
        }
    }

    /// The order (aggregate id) the event belongs to.
    pub fn order_id(&self) -> Uuid {
        match self {
            OrderEvent::Created(e) => e.order_id,
            OrderEvent::PaymentDebited(e) => e.order_id,
            OrderEvent::PaymentFailed(e) => e.order_id,
            OrderEvent::Approved(e) => e.order_id,
            OrderEvent::Rejected(e) => e.order_id,
            OrderEvent::Cancelled(e) => e.order_id,
            OrderEvent::PaymentRefunded(e) => e.order_id,
        }
    }

    /// The event's data as a JSON object (the type travels separately, see [`Self::event_type`]).
    ///
    /// Built by hand rather than through `serde_json::to_value` so that it cannot fail; a test
    /// checks that it equals the derived `Serialize` output.
    pub fn to_json(&self) -> Value {
        let mut data = Map::new();
        let mut put = |key: &str, value: Value| {
            data.insert(key.to_owned(), value);
        };
        match self {
            OrderEvent::Created(e) => {
                put("order_id", uuid(e.order_id));
                put("customer_id", text(&e.customer_id));
                put("restaurant_id", text(&e.restaurant_id));
                put(
                    "order_items",
                    Value::Array(e.order_items.iter().map(item).collect()),
                );
                put("amount", money(e.amount));
                put("created_on", Value::String(rfc3339::format(e.created_on)));
            }
            OrderEvent::PaymentDebited(e) => {
                put("order_id", uuid(e.order_id));
                put("customer_id", text(&e.customer_id));
                put("amount", money(e.amount));
                put("payment_id", uuid(e.payment_id));
            }
            OrderEvent::PaymentFailed(e) => {
                put("order_id", uuid(e.order_id));
                put("customer_id", text(&e.customer_id));
                put("amount", money(e.amount));
                put("reason", text(&e.reason));
            }
            OrderEvent::Approved(e) => {
                put("order_id", uuid(e.order_id));
            }
            OrderEvent::Rejected(e) => {
                put("order_id", uuid(e.order_id));
                put("reason", text(&e.reason));
            }
            OrderEvent::Cancelled(e) => {
                put("order_id", uuid(e.order_id));
                put("reason", text(&e.reason));
            }
            OrderEvent::PaymentRefunded(e) => {
                put("order_id", uuid(e.order_id));
                put("customer_id", text(&e.customer_id));
                put("amount", money(e.amount));
                put("payment_id", uuid(e.payment_id));
            }
        }
        Value::Object(data)
    }

    /// Reads an event back from its type and data. Unknown fields in the data are ignored so
    /// that producers can add fields without breaking older consumers.
    pub fn decode(event_type: &str, data: &Value) -> Result<OrderEvent, DecodeError> {
        fn parse<T: serde::de::DeserializeOwned>(
            event_type: &'static str,
            data: &Value,
        ) -> Result<T, DecodeError> {
            T::deserialize(data).map_err(|source| DecodeError::InvalidData { event_type, source })
        }
        Ok(match event_type {
            event_type::CREATED => OrderEvent::Created(parse(event_type::CREATED, data)?),
            event_type::PAYMENT_DEBITED => {
                OrderEvent::PaymentDebited(parse(event_type::PAYMENT_DEBITED, data)?)
            }
            event_type::PAYMENT_FAILED => {
                OrderEvent::PaymentFailed(parse(event_type::PAYMENT_FAILED, data)?)
            }
            event_type::APPROVED => OrderEvent::Approved(parse(event_type::APPROVED, data)?),
            event_type::REJECTED => OrderEvent::Rejected(parse(event_type::REJECTED, data)?),
            event_type::CANCELLED => OrderEvent::Cancelled(parse(event_type::CANCELLED, data)?),
            event_type::PAYMENT_REFUNDED => {
                OrderEvent::PaymentRefunded(parse(event_type::PAYMENT_REFUNDED, data)?)
            }
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

macro_rules! into_event {
    ($($variant:ident),*) => {$(
        impl From<$variant> for OrderEvent {
            fn from(event: $variant) -> OrderEvent {
                OrderEvent::$variant(event)
            }
        }
    )*};
}

into_event!(
    PaymentDebited,
    PaymentFailed,
    Approved,
    Rejected,
    Cancelled,
    PaymentRefunded
);

impl From<OrderCreated> for OrderEvent {
    fn from(event: OrderCreated) -> OrderEvent {
        OrderEvent::Created(event)
    }
}

fn uuid(id: Uuid) -> Value {
    Value::String(id.to_string())
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn money(m: Money) -> Value {
    Value::String(m.to_string())
}

fn item(item: &OrderItem) -> Value {
    let mut data = Map::new();
    data.insert("code".to_owned(), text(&item.code));
    data.insert("name".to_owned(), text(&item.name));
    data.insert("unit_price".to_owned(), money(item.unit_price));
    data.insert("quantity".to_owned(), Value::from(item.quantity));
    Value::Object(data)
}

/// RFC 3339 timestamps that always serialize.
///
/// RFC 3339 cannot write an offset with seconds or a year outside 0000–9999. The first is
/// written in UTC instead (same instant); the second cannot happen for a real order, and is
/// clamped rather than made into a failure every caller would have to handle.
pub(crate) mod rfc3339 {
    use serde::{Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::{OffsetDateTime, UtcOffset};

    pub(crate) fn format(at: OffsetDateTime) -> String {
        at.format(&Rfc3339)
            .or_else(|_| at.to_offset(UtcOffset::UTC).format(&Rfc3339))
            .unwrap_or_else(|_| "0000-01-01T00:00:00Z".to_owned())
    }

    pub(crate) fn serialize<S: Serializer>(
        at: &OffsetDateTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*at))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OffsetDateTime, D::Error> {
        time::serde::rfc3339::deserialize(deserializer)
    }
}
