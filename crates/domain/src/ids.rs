//! Deterministic identifiers, so that a redelivered message or a retried step names the same
//! event or payment as the first attempt and the event store can drop the duplicate.

use uuid::Uuid;

/// Namespace of event ids derived from the event that caused them. Never change it: stored ids
/// depend on it.
const CAUSED_EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_2f3e_8a4b_4c1d_9e57_1b2d_3c4e_5f60);

/// Namespace of payment ids derived from order ids. Never change it.
const PAYMENT_NAMESPACE: Uuid = Uuid::from_u128(0x2b7e_9d14_5c3a_4f8e_b061_7a8c_9d0e_1f23);

/// The id of the `event_type` event caused by `causing_event_id`: UUIDv5 of the causing id's
/// 16 bytes followed by the type's bytes.
pub fn caused_event_id(causing_event_id: Uuid, event_type: &str) -> Uuid {
    let mut name = Vec::with_capacity(16 + event_type.len());
    name.extend_from_slice(causing_event_id.as_bytes());
    name.extend_from_slice(event_type.as_bytes());
    Uuid::new_v5(&CAUSED_EVENT_NAMESPACE, &name)
}

/// The id of an order's (only) debit: UUIDv5 of the order id's bytes.
pub fn payment_id(order_id: Uuid) -> Uuid {
    Uuid::new_v5(&PAYMENT_NAMESPACE, order_id.as_bytes())
}
