//! Deterministic identifiers, so that a redelivered message or a retried step names the same
//! event or payment as the first attempt and the event store can drop the duplicate.

use uuid::Uuid;

use crate::deadline::Step;

/// Namespace of event ids derived from the event that caused them. Never change it: stored ids
/// depend on it.
const CAUSED_EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_2f3e_8a4b_4c1d_9e57_1b2d_3c4e_5f60);

/// Namespace of payment ids derived from order ids. Never change it.
const PAYMENT_NAMESPACE: Uuid = Uuid::from_u128(0x2b7e_9d14_5c3a_4f8e_b061_7a8c_9d0e_1f23);

/// Namespace of the ids of deadline cancels. Never change it: stored ids depend on it.
const DEADLINE_NAMESPACE: Uuid = Uuid::from_u128(0x9a41_c7d2_3e5b_4f60_8172_a3b4_c5d6_e7f8);

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

/// The id of the `cancelled` event that ends `order_id` for missing the deadline of `step`:
/// UUIDv5 of the order id's 16 bytes followed by the step's name. An order waits for each step
/// once, so however many watchers decide it, and however often, there is one such event.
pub fn deadline_event_id(order_id: Uuid, step: Step) -> Uuid {
    let step = step.as_str();
    let mut name = Vec::with_capacity(16 + step.len());
    name.extend_from_slice(order_id.as_bytes());
    name.extend_from_slice(step.as_bytes());
    Uuid::new_v5(&DEADLINE_NAMESPACE, &name)
}
