//! The invariants, one function each, over the snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};

use order_domain::{
    Deadlines, Order, OrderEvent, OrderStatus, Step, deadline_event_id, deadline_step,
};
use pipeline_runtime::stream::{STREAM, headers};
use rust_decimal::Decimal;
use sqlx::types::time::OffsetDateTime;
use uuid::Uuid;

use crate::load::LoadStats;

use super::*;

pub(crate) fn clients(load: &LoadStats) -> Invariant {
    let mut clients = Invariant::new(
        "clients",
        "clients got only answers a correct pipeline gives, and none gave up",
        "requests",
    );
    clients.checked = load.offered + load.cancels.requested;
    for example in &load.unexpected_examples {
        clients.violation(example.clone());
    }
    // Quoted up to EXAMPLES; the rest are counted.
    clients.violations = load.unexpected;
    for _ in 0..load.gave_up {
        clients.violation("a POST still failed after the retry deadline".to_owned());
    }
    for _ in 0..load.cancels.gave_up {
        clients.violation("a cancel still failed after the retry deadline".to_owned());
    }
    clients
}

/// Every order's history: versions 1..n without a gap, all `order` events of the ORDERS stream,
/// each decodable, and together a legal path of the order's state machine.
pub(crate) fn histories(snapshot: &Snapshot) -> (BTreeMap<Uuid, History<'_>>, Invariant) {
    let mut invariant = Invariant::new(
        "history",
        "every order's history is a legal path with versions 1..n",
        "orders",
    );
    let mut grouped: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
    for event in &snapshot.events {
        grouped.entry(&event.aggregate_id).or_default().push(event);
    }
    let mut histories = BTreeMap::new();
    for (aggregate_id, events) in grouped {
        invariant.checked += 1;
        let types = || {
            events
                .iter()
                .map(|e| format!("v{} {}", e.version, e.event_type))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Ok(order_id) = aggregate_id.parse::<Uuid>() else {
            invariant.violation(format!("aggregate id {aggregate_id:?} is not a UUID"));
            continue;
        };
        let contiguous = events
            .iter()
            .enumerate()
            .all(|(i, e)| e.version == i as i64 + 1);
        invariant.expect(contiguous, || {
            format!("order {order_id}: versions are not 1..n: {}", types())
        });
        invariant.expect(
            events
                .iter()
                .all(|e| e.aggregate_type == order_domain::AGGREGATE_TYPE && e.stream == STREAM),
            || format!("order {order_id}: an event not of type order on {STREAM}"),
        );
        let decoded: Result<Vec<(&Stored, OrderEvent)>, String> = events
            .iter()
            .map(|e| {
                OrderEvent::decode(&e.event_type, &e.data)
                    .map(|decoded| (*e, decoded))
                    .map_err(|error| format!("v{}: {error}", e.version))
            })
            .collect();
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                invariant.violation(format!("order {order_id}: {error}"));
                continue;
            }
        };
        match Order::fold(decoded.iter().map(|(_, e)| e)) {
            Ok(Some(order)) => {
                invariant.expect(order.order_id == order_id, || {
                    format!("order {order_id}: created names order {}", order.order_id)
                });
                invariant.expect(order.version == events.len() as i64, || {
                    format!("order {order_id}: folded to version {}", order.version)
                });
                histories.insert(
                    order_id,
                    History {
                        events: decoded,
                        order,
                    },
                );
            }
            Ok(None) => invariant.violation(format!("order {order_id}: no event")),
            Err(error) => {
                invariant.violation(format!("order {order_id}: {error} ({})", types()));
            }
        }
    }
    (histories, invariant)
}

/// Every accepted order (and every other order in the store) is final in the read model, refunded
/// when it must be, and for the customer and amount the client posted.
pub(crate) fn settled_orders(
    snapshot: &Snapshot,
    load: &LoadStats,
    histories: &BTreeMap<Uuid, History<'_>>,
) -> Invariant {
    let mut invariant = Invariant::new(
        "final",
        "every accepted order is final in the read model (refunded when it must be)",
        "orders",
    );
    let check = |invariant: &mut Invariant, order_id: Uuid, what: &str| match snapshot
        .orders
        .get(&order_id)
    {
        None => invariant.violation(format!("{what} {order_id} is not in the read model")),
        Some(row) => invariant.expect(settled(&row.status, row.refunded, row.payment_id), || {
            format!(
                "{what} {order_id} is {} at version {} (refunded: {})",
                row.status, row.version, row.refunded
            )
        }),
    };
    let mut accepted = HashSet::new();
    for placed in &load.placed {
        invariant.checked += 1;
        accepted.insert(placed.order_id);
        invariant.expect(histories.contains_key(&placed.order_id), || {
            format!(
                "accepted order {} has no history in the event store",
                placed.order_id
            )
        });
        check(&mut invariant, placed.order_id, "accepted order");
        if let Some(row) = snapshot.orders.get(&placed.order_id) {
            invariant.expect(
                row.customer_id == placed.customer_id && row.amount == placed.amount,
                || {
                    format!(
                        "order {} is {} for {}, but {} for {} was posted",
                        placed.order_id,
                        row.amount,
                        row.customer_id,
                        placed.amount,
                        placed.customer_id
                    )
                },
            );
        }
    }
    // Orders whose 2xx the client never saw (the answer was lost, then the client gave up).
    for order_id in histories.keys().filter(|id| !accepted.contains(id)) {
        invariant.checked += 1;
        check(&mut invariant, *order_id, "unacknowledged order");
    }
    invariant
}

/// The read model holds exactly the folded orders, field by field.
pub(crate) fn read_model(
    snapshot: &Snapshot,
    histories: &BTreeMap<Uuid, History<'_>>,
) -> Invariant {
    let mut invariant = Invariant::new(
        "read-model",
        "the read model equals the fold of the event store",
        "orders",
    );
    for (order_id, history) in histories {
        invariant.checked += 1;
        let order = &history.order;
        let Some(row) = snapshot.orders.get(order_id) else {
            invariant.violation(format!("order {order_id} has no read-model row"));
            continue;
        };
        let mut differences = Vec::new();
        let mut differ = |field: &str, read: String, folded: String| {
            if read != folded {
                differences.push(format!("{field} {read} (fold: {folded})"));
            }
        };
        differ(
            "status",
            row.status.clone(),
            order.status.as_str().to_owned(),
        );
        differ(
            "version",
            row.version.to_string(),
            order.version.to_string(),
        );
        differ(
            "amount",
            row.amount.normalize().to_string(),
            order.amount.as_decimal().normalize().to_string(),
        );
        differ(
            "refunded",
            row.refunded.to_string(),
            order.refunded.to_string(),
        );
        differ(
            "payment_id",
            format!("{:?}", row.payment_id),
            format!("{:?}", order.payment_id),
        );
        differ(
            "reason",
            format!("{:?}", row.reason),
            format!("{:?}", order.reason),
        );
        differ(
            "customer_id",
            row.customer_id.clone(),
            order.customer_id.clone(),
        );
        differ(
            "restaurant_id",
            row.restaurant_id.clone(),
            order.restaurant_id.clone(),
        );
        differ(
            "created_on",
            row.created_on.to_string(),
            order.created_on.to_string(),
        );
        let items = snapshot.items.get(order_id).map_or(&[][..], Vec::as_slice);
        let same_items = items.len() == order.items.len()
            && items.iter().zip(&order.items).all(|(row, item)| {
                row.code == item.code
                    && row.name == item.name
                    && row.unit_price == item.unit_price.as_decimal()
                    && row.quantity == i64::from(item.quantity)
            });
        if items.len() != order.items.len() {
            differences.push(format!(
                "{} item lines (fold: {})",
                items.len(),
                order.items.len()
            ));
        } else if !same_items {
            differences.push("item lines differ".to_owned());
        }
        if !differences.is_empty() {
            invariant.violation(format!("order {order_id}: {}", differences.join(", ")));
        }
    }
    let orphans = snapshot
        .orders
        .keys()
        .filter(|id| !histories.contains_key(id));
    for order_id in orphans {
        invariant.checked += 1;
        invariant.violation(format!("read-model row {order_id} has no event"));
    }
    invariant
}

/// paymentsdb agrees with the payment events: one payment per order, a refund only of a debit
/// and for its amount, and every wallet = initial credit − debits + refunds.
pub(crate) fn payments(
    snapshot: &Snapshot,
    histories: &BTreeMap<Uuid, History<'_>>,
    initial: Decimal,
) -> Invariant {
    let mut invariant = Invariant::new(
        "payments",
        "payments: one debit per order, refunds match debits, wallets add up",
        "orders and wallets",
    );
    // customer -> (debited, refunded) according to the events
    let mut by_customer: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    for (order_id, history) in histories {
        invariant.checked += 1;
        let debits: Vec<(&Stored, &order_domain::PaymentDebited)> = history
            .events
            .iter()
            .filter_map(|(stored, event)| match event {
                OrderEvent::PaymentDebited(debit) => Some((*stored, debit)),
                _ => None,
            })
            .collect();
        let refunds: Vec<(&Stored, &order_domain::PaymentRefunded)> = history
            .events
            .iter()
            .filter_map(|(stored, event)| match event {
                OrderEvent::PaymentRefunded(refund) => Some((*stored, refund)),
                _ => None,
            })
            .collect();
        let failed = history
            .events
            .iter()
            .any(|(_, event)| matches!(event, OrderEvent::PaymentFailed(_)));
        invariant.expect(debits.len() <= 1 && refunds.len() <= 1, || {
            format!(
                "order {order_id}: {} debits and {} refunds in its history",
                debits.len(),
                refunds.len()
            )
        });
        let totals = by_customer.entry(&history.order.customer_id).or_default();
        totals.0 += debits
            .iter()
            .map(|(_, d)| d.amount.as_decimal())
            .sum::<Decimal>();
        totals.1 += refunds
            .iter()
            .map(|(_, r)| r.amount.as_decimal())
            .sum::<Decimal>();
        let row = snapshot.payments.get(order_id);
        match (debits.first(), row) {
            (Some((stored, debit)), Some(row)) => {
                invariant.expect(
                    row.amount == debit.amount.as_decimal()
                        && debit.amount == history.order.amount
                        && row.payment_id == debit.payment_id
                        && row.customer_id == debit.customer_id
                        && row.debit_event_id == Some(stored.event_id),
                    || {
                        format!(
                            "order {order_id}: payment row ({} {} {} debit event {:?}) differs from \
                             its paymentdebited ({} {} {} event {})",
                            row.amount,
                            row.payment_id,
                            row.customer_id,
                            row.debit_event_id,
                            debit.amount,
                            debit.payment_id,
                            debit.customer_id,
                            stored.event_id
                        )
                    },
                );
                match refunds.first() {
                    Some((stored, refund)) => {
                        invariant.expect(
                            row.status == "refunded"
                                && row.refund_event_id == Some(stored.event_id)
                                && refund.amount == debit.amount
                                && refund.payment_id == debit.payment_id,
                            || {
                                format!(
                                    "order {order_id}: refund {} of payment {} (event {}) vs payment \
                                     row {} with refund event {:?}",
                                    refund.amount,
                                    refund.payment_id,
                                    stored.event_id,
                                    row.status,
                                    row.refund_event_id
                                )
                            },
                        );
                    }
                    None => invariant.expect(
                        row.status == "debited" && row.refund_event_id.is_none(),
                        || {
                            format!(
                                "order {order_id} is {} without a refund event, but its payment \
                                 row is {}",
                                history.order.status, row.status
                            )
                        },
                    ),
                }
            }
            (Some(_), None) => invariant.violation(format!(
                "order {order_id} was debited (event) but paymentsdb has no payment"
            )),
            (None, Some(row)) if failed => invariant.expect(
                row.status == "failed" && row.debit_event_id.is_none(),
                || {
                    format!(
                        "order {order_id}: payment failed, but its row is {}",
                        row.status
                    )
                },
            ),
            (None, None) if failed => invariant.violation(format!(
                "order {order_id}: payment failed (event) but paymentsdb has no payment"
            )),
            // Decided but never appended: the customer cancelled first. The decision must not
            // keep any money: a debit is voided, a failure took nothing.
            (None, Some(row)) => invariant.expect(
                history.order.status == OrderStatus::Cancelled
                    && (row.status == "voided" || row.status == "failed"),
                || {
                    format!(
                        "order {order_id} is {} without a payment event, but its payment row is \
                         {} for {}",
                        history.order.status, row.status, row.amount
                    )
                },
            ),
            (None, None) => {}
        }
        invariant.expect(refunds.is_empty() || !debits.is_empty(), || {
            format!("order {order_id} was refunded without a debit")
        });
    }
    for (order_id, row) in &snapshot.payments {
        if !histories.contains_key(order_id) {
            invariant.violation(format!(
                "paymentsdb has a {} payment of {} for unknown order {order_id}",
                row.status, row.amount
            ));
        }
    }
    wallets(&mut invariant, snapshot, &by_customer, initial);
    invariant
}

/// Each wallet against the payment events (initial − debited + refunded) and against its own
/// payment rows (initial − what the `debited` ones keep).
pub(crate) fn wallets(
    invariant: &mut Invariant,
    snapshot: &Snapshot,
    by_customer: &BTreeMap<&str, (Decimal, Decimal)>,
    initial: Decimal,
) {
    let mut kept_by_rows: BTreeMap<&str, Decimal> = BTreeMap::new();
    for row in snapshot.payments.values() {
        if row.status == "debited" {
            *kept_by_rows.entry(&row.customer_id).or_default() += row.amount;
        }
    }
    for (customer, balance) in &snapshot.wallets {
        invariant.checked += 1;
        let (debited, refunded) = by_customer
            .get(customer.as_str())
            .copied()
            .unwrap_or_default();
        let expected = initial - debited + refunded;
        invariant.expect(*balance == expected, || {
            format!(
                "wallet {customer} holds {balance}, but {initial} − {debited} debited + {refunded} \
                 refunded = {expected}"
            )
        });
        let kept = kept_by_rows
            .get(customer.as_str())
            .copied()
            .unwrap_or_default();
        invariant.expect(*balance == initial - kept, || {
            format!("wallet {customer} holds {balance}, but its debited payments keep {kept}")
        });
        invariant.expect(*balance >= Decimal::ZERO, || {
            format!("wallet {customer} is negative: {balance}")
        });
    }
    for (customer, (debited, _)) in by_customer {
        invariant.expect(
            *debited == Decimal::ZERO || snapshot.wallets.contains_key(*customer),
            || format!("customer {customer} was debited but has no wallet"),
        );
    }
}

/// The business rules show in the outcomes: review approves up to the limit and rejects above it,
/// and nothing above the initial credit is ever debited.
pub(crate) fn rules(
    histories: &BTreeMap<Uuid, History<'_>>,
    initial: Decimal,
    review_max: Decimal,
) -> Invariant {
    let mut invariant = Invariant::new(
        "rules",
        "outcomes follow the rules (review limit, credit limit)",
        "orders",
    );
    for (order_id, history) in histories {
        invariant.checked += 1;
        let order = &history.order;
        let amount = order.amount.as_decimal();
        let reviewed = history.events.iter().find_map(|(_, event)| match event {
            OrderEvent::Approved(_) => Some(true),
            OrderEvent::Rejected(_) => Some(false),
            _ => None,
        });
        match reviewed {
            Some(true) => invariant.expect(amount <= review_max, || {
                format!("order {order_id} of {amount} was approved over the {review_max} limit")
            }),
            Some(false) => invariant.expect(amount > review_max, || {
                format!("order {order_id} of {amount} was rejected within the {review_max} limit")
            }),
            None => {}
        }
        invariant.expect(order.payment_id.is_none() || amount <= initial, || {
            format!("order {order_id} of {amount} was debited from a wallet of at most {initial}")
        });
        invariant.expect(
            order.status != OrderStatus::Pending || order.version == 1,
            || format!("order {order_id} is Pending at version {}", order.version),
        );
    }
    invariant
}

/// The watcher's cancels: each one ends an order that waited for the step it names at least that
/// step's deadline (between the stored times of the event that opened the step and of the cancel),
/// under the step's deterministic id; and no order was both approved and cancelled.
pub(crate) fn deadline_cancels(
    histories: &BTreeMap<Uuid, History<'_>>,
    deadlines: &Deadlines,
) -> Invariant {
    let mut invariant = Invariant::new(
        "deadlines",
        "the watcher cancelled only overdue orders, once each; no order approved and cancelled",
        "deadline cancels",
    );
    for (order_id, history) in histories {
        let approved = history
            .events
            .iter()
            .any(|(_, event)| matches!(event, OrderEvent::Approved(_)));
        let mut status = OrderStatus::Pending;
        let mut opened_at = None;
        for (stored, event) in &history.events {
            if let OrderEvent::Cancelled(cancel) = event {
                invariant.expect(!approved, || {
                    format!("order {order_id} was approved and cancelled")
                });
                // A deadline cancel is known by its id (one per order and step); its reason
                // must name the same step.
                let by_id = Step::ALL
                    .into_iter()
                    .find(|step| stored.event_id == deadline_event_id(*order_id, *step));
                let by_reason = deadline_step(&cancel.reason);
                if by_id.is_some() || by_reason.is_some() {
                    invariant.checked += 1;
                }
                invariant.expect(by_id == by_reason, || {
                    format!(
                        "order {order_id}: cancel {} ({:?}) with reason {:?}",
                        stored.event_id, by_id, cancel.reason
                    )
                });
                if let Some(step) = by_id {
                    invariant.expect(step.status() == status, || {
                        format!(
                            "order {order_id} was cancelled for its {step} while {status}: {}",
                            cancel.reason
                        )
                    });
                    let waited = opened_at.map(|at: OffsetDateTime| stored.created_at - at);
                    let deadline = deadlines.of(step);
                    invariant.expect(
                        waited.is_some_and(|waited| {
                            waited.as_seconds_f64() >= deadline.as_secs_f64()
                        }),
                        || {
                            format!(
                                "order {order_id} was cancelled for its {step} after {waited:?}, \
                                 before its {deadline:?} deadline"
                            )
                        },
                    );
                }
            }
            // The status before the next event, and when it began.
            status = match event {
                OrderEvent::Created(_) => OrderStatus::Pending,
                OrderEvent::PaymentDebited(_) => OrderStatus::Paid,
                OrderEvent::PaymentFailed(_) => OrderStatus::PaymentFailed,
                OrderEvent::Approved(_) => OrderStatus::Approved,
                OrderEvent::Rejected(_) => OrderStatus::Rejected,
                OrderEvent::Cancelled(_) => OrderStatus::Cancelled,
                OrderEvent::PaymentRefunded(_) => status,
            };
            if !matches!(event, OrderEvent::PaymentRefunded(_)) {
                opened_at = Some(stored.created_at);
            }
        }
    }
    invariant
}

/// The stream holds every committed event exactly once, nothing else, each aggregate's events in
/// version order, and the outbox is empty.
pub(crate) fn stream(snapshot: &Snapshot) -> Invariant {
    let mut invariant = Invariant::new(
        "stream",
        "ORDERS holds every committed event exactly once, in order; the outbox is empty",
        "events",
    );
    let committed: HashMap<Uuid, &Stored> =
        snapshot.events.iter().map(|e| (e.event_id, e)).collect();
    let mut seen: HashMap<Uuid, u32> = HashMap::new();
    let mut last_version: HashMap<&str, i64> = HashMap::new();
    for message in &snapshot.stream {
        let Some(id) = message.header.get(headers::MSG_ID) else {
            invariant.violation(format!(
                "message {} on {} has no {}",
                message.sequence,
                message.subject,
                headers::MSG_ID
            ));
            continue;
        };
        let Ok(event_id) = id.parse::<Uuid>() else {
            invariant.violation(format!(
                "message {} has {} {id:?}, not an event id",
                message.sequence,
                headers::MSG_ID
            ));
            continue;
        };
        *seen.entry(event_id).or_default() += 1;
        let Some(event) = committed.get(&event_id) else {
            invariant.violation(format!(
                "message {} carries event {event_id}, which the event store does not hold",
                message.sequence
            ));
            continue;
        };
        let previous = last_version.insert(&event.aggregate_id, event.version);
        invariant.expect(
            previous.is_none_or(|previous| previous < event.version),
            || {
                format!(
                    "order {}: version {} published (sequence {}) after version {}",
                    event.aggregate_id,
                    event.version,
                    message.sequence,
                    previous.unwrap_or_default()
                )
            },
        );
    }
    for event in &snapshot.events {
        invariant.checked += 1;
        match seen.get(&event.event_id).copied().unwrap_or(0) {
            1 => {}
            0 => invariant.violation(format!(
                "event {} (order {} v{} {}) never reached the stream",
                event.event_id, event.aggregate_id, event.version, event.event_type
            )),
            n => invariant.violation(format!(
                "event {} (order {} v{} {}) is on the stream {n} times",
                event.event_id, event.aggregate_id, event.version, event.event_type
            )),
        }
    }
    for event_id in &snapshot.outbox {
        invariant.violation(format!("event {event_id} is still in the outbox"));
    }
    invariant
}
