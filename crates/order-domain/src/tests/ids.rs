//! Deterministic ids: the same cause always names the same effect.

use super::given::*;
use crate::{caused_event_id, payment_id};

#[test]
fn a_caused_event_id_depends_only_on_its_cause_and_type() {
    let id = caused_event_id(ORDER_ID, "paymentdebited");
    assert_eq!(id, caused_event_id(ORDER_ID, "paymentdebited"));
    assert_eq!(id.get_version_num(), 5);
    assert_ne!(id, caused_event_id(ORDER_ID, "paymentfailed"));
    assert_ne!(id, caused_event_id(OTHER_ORDER_ID, "paymentdebited"));
}

#[test]
fn derived_ids_never_change() {
    // Stored ids depend on the namespaces; these values were computed independently (Python's
    // SHA-1 over namespace, order id bytes and type), so changing a namespace fails here.
    assert_eq!(
        caused_event_id(ORDER_ID, "approved").to_string(),
        "c826a8f7-f095-5d6c-8d6b-f5bc15f561bb"
    );
    assert_eq!(
        payment_id(ORDER_ID).to_string(),
        "e381ddff-947e-5dbb-b825-fb1b2ce83d6d"
    );
}

#[test]
fn a_retried_debit_names_the_same_payment() {
    assert_eq!(payment_id(ORDER_ID), payment_id(ORDER_ID));
    assert_eq!(payment_id(ORDER_ID).get_version_num(), 5);
    assert_ne!(payment_id(ORDER_ID), payment_id(OTHER_ORDER_ID));
    assert_ne!(payment_id(ORDER_ID), caused_event_id(ORDER_ID, ""));
}
