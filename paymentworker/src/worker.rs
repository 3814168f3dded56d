//! The message handler: what the payment worker does with each event of the `ORDERS` stream.
//!
//! The `created` messages of a batch are paid from the messages alone (a `created` carries the whole
//! order, and at its version the order is Pending): one paymentsdb transaction records every
//! decision of the batch, then one `CreateEvents` call appends them, each expecting the `created`'s
//! version. Only an append that conflicts (the customer cancelled first) reads the order's history,
//! to undo the debit the order never saw. Rejections and cancellations (the compensation) are rarer
//! and go on the order's history, one at a time per order, different orders' at the same time and
//! beside the batch's payments (after them for an order paid in the same batch).

use std::collections::{HashMap, HashSet};

use anyhow::anyhow;
use order_domain::{
    Money, Order, OrderEvent, OrderStatus, caused_event_id, event_type, payment_id,
};
use pipeline_runtime::consumer::{Delivery, Failure};
use pipeline_runtime::eventstore::{BatchAppend, ClientError, EventStoreClient};
use pipeline_runtime::stream::EventEnvelope;
use sqlx::PgPool;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::ledger::{self, Decision, LedgerError, Refund, ToSettle};
use pipeline_runtime::orders::{self, History};

/// Everything a message needs; shared by the messages in hand.
pub struct Worker {
    pub store: EventStoreClient,
    pub pool: PgPool,
    pub initial_credit: Money,
}

impl Worker {
    /// Handles a batch: one outcome per delivery, in order. The `created` messages are paid
    /// together while the rejections and cancellations of other orders are compensated (one at a
    /// time per order, different orders' at the same time); a cancel that follows its order's
    /// `created` in the same batch waits for the payment, so that it finds it recorded.
    pub async fn handle_batch(&self, deliveries: Vec<Delivery>) -> Vec<Result<(), Failure>> {
        let mut outcomes: Vec<Option<Result<(), Failure>>> =
            deliveries.iter().map(|_| None).collect();
        let mut created = Vec::new();
        let mut compensations = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            match orders::decode_message(&delivery.envelope) {
                Ok(OrderEvent::Created(event)) => {
                    created.push((index, Order::from_created(&event)))
                }
                Ok(OrderEvent::Rejected(_) | OrderEvent::Cancelled(_)) => compensations.push(index),
                Ok(_) => outcomes[index] = Some(Ok(())),
                Err(failure) => outcomes[index] = Some(Err(failure)),
            }
        }
        let paid_here: HashSet<&str> = created
            .iter()
            .map(|(index, _)| deliveries[*index].envelope.aggregate_id.as_str())
            .collect();
        let (after_payment, independent): (Vec<usize>, Vec<usize>) =
            compensations.into_iter().partition(|&index| {
                paid_here.contains(deliveries[index].envelope.aggregate_id.as_str())
            });
        let paying = async {
            let paid = if created.is_empty() {
                Vec::new()
            } else {
                self.pay(&deliveries, created).await
            };
            let compensated = self.compensate(&deliveries, after_payment).await;
            paid.into_iter().chain(compensated).collect::<Vec<_>>()
        };
        let (paid, compensated) =
            futures::future::join(paying, self.compensate(&deliveries, independent)).await;
        for (index, outcome) in paid.into_iter().chain(compensated) {
            outcomes[index] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Ok(())))
            .collect()
    }

    /// Compensates the rejections and cancellations at these places of the batch: each order's in
    /// batch order, different orders' at the same time, so that one order's history read does not
    /// hold up the others.
    async fn compensate(
        &self,
        deliveries: &[Delivery],
        compensations: Vec<usize>,
    ) -> Vec<(usize, Result<(), Failure>)> {
        let orders = per_order(
            compensations
                .into_iter()
                .map(|index| (index, deliveries[index].envelope.aggregate_id.as_str())),
        );
        futures::future::join_all(orders.into_iter().map(|indices| async move {
            let mut done = Vec::with_capacity(indices.len());
            for index in indices {
                let delivery = &deliveries[index];
                let outcome = self
                    .on_rejected_or_cancelled(&delivery.envelope)
                    .instrument(delivery.span.clone())
                    .await;
                done.push((index, outcome));
            }
            done
        }))
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    /// Pays the Pending orders of `created` (index in the batch, the order its `created` makes):
    /// every decision is recorded in one paymentsdb transaction first, then appended in one call; a
    /// redelivery finds its record, so a wallet changes once per order.
    async fn pay(
        &self,
        deliveries: &[Delivery],
        created: Vec<(usize, Order)>,
    ) -> Vec<(usize, Result<(), Failure>)> {
        let batch: Vec<ToSettle> = created
            .iter()
            .map(|(index, order)| ToSettle {
                order: order.clone(),
                debit_event_id: caused_event_id(
                    deliveries[*index].envelope.event_id,
                    event_type::PAYMENT_DEBITED,
                ),
            })
            .collect();
        let decisions = match ledger::settle_batch(&self.pool, &batch, self.initial_credit).await {
            Ok(decisions) => decisions,
            Err(err) => {
                let failures = ledger_failure(err).for_each(created.len());
                return created
                    .into_iter()
                    .zip(failures)
                    .map(|((index, _), failure)| (index, Err(failure)))
                    .collect();
            }
        };
        let mut results = Vec::with_capacity(created.len());
        let mut appends = Vec::new();
        let mut appended_for = Vec::new();
        for ((index, order), decision) in created.into_iter().zip(decisions) {
            let delivery = &deliveries[index];
            let payment = payment_id(order.order_id);
            let event = match decision {
                Err(err) => {
                    results.push((index, Err(ledger_failure(err))));
                    continue;
                }
                // An earlier delivery's debit was voided: the order moved on without it.
                Ok(Decision::Voided) => {
                    results.push((index, Ok(())));
                    continue;
                }
                Ok(Decision::Debited) => order.settle_payment(payment, Some(order.amount)),
                Ok(Decision::Failed) => order.settle_payment(payment, None),
            };
            let event = match event {
                Ok(event) => event,
                Err(refusal) => {
                    results.push((index, Err(Failure::retry(refusal))));
                    continue;
                }
            };
            let event_id = caused_event_id(delivery.envelope.event_id, event.event_type());
            appends.push(BatchAppend {
                event: orders::caused_event(&delivery.envelope, event_id, &event),
                expected_version: delivery.envelope.aggregate_version,
                parent: delivery.span.clone(),
            });
            appended_for.push(index);
        }
        if appends.is_empty() {
            return results;
        }
        let appended = self.store.append_batch(appends).await;
        for (position, index) in appended_for.into_iter().enumerate() {
            let delivery = &deliveries[index];
            let outcome = match orders::batch_outcome(&appended, position) {
                Ok(_) => Ok(()),
                Err(ClientError::Conflict(message)) => {
                    self.after_conflict(&delivery.envelope, &message)
                        .instrument(delivery.span.clone())
                        .await
                }
                Err(err) => Err(orders::store_failure(err)),
            };
            results.push((index, outcome));
        }
        results
    }

    /// The payment lost a race: the order is no longer at its `created` version (the customer
    /// cancelled). If it never saw our decision, the decision is undone here; there is no event to
    /// append.
    async fn after_conflict(&self, envelope: &EventEnvelope, message: &str) -> Result<(), Failure> {
        let history = History::for_message(&self.store, &envelope.aggregate_id).await?;
        if history.order.status == OrderStatus::Pending {
            return Err(Failure::retry(anyhow!(
                "version conflict on a Pending order: {message}"
            )));
        }
        tracing::info!(
            status = %history.order.status,
            "the order moved on before the payment was appended"
        );
        self.void_unseen_debit(&history).await
    }

    /// Refunds a debited order that was rejected or cancelled, once.
    #[tracing::instrument(skip_all, fields(order.id = %envelope.aggregate_id))]
    async fn on_rejected_or_cancelled(&self, envelope: &EventEnvelope) -> Result<(), Failure> {
        let history = History::for_message(&self.store, &envelope.aggregate_id).await?;
        let order = &history.order;
        if !order.needs_refund() {
            // Never debited (cancelled while Pending: undo a debit that lost the race), or
            // already refunded.
            return if order.payment_id.is_none() {
                self.void_unseen_debit(&history).await
            } else {
                Ok(())
            };
        }
        let cause = history
            .last_of(&[event_type::REJECTED, event_type::CANCELLED])
            .ok_or_else(|| {
                Failure::dead_letter(anyhow!("a {} order without its event", order.status))
            })?;
        let event = order.refund().map_err(Failure::retry)?;
        let event_id = caused_event_id(cause, event_type::PAYMENT_REFUNDED);
        let refund = ledger::refund(&self.pool, order.order_id, event_id)
            .await
            .map_err(ledger_failure)?;
        if refund == Refund::Credited {
            tracing::info!(amount = %order.amount, "payment refunded to the wallet");
        }
        // Appended even when the wallet was credited by an earlier delivery: that one may have
        // stopped before its append.
        self.append(envelope, event_id, &event, order.version)
            .await
            .map_err(orders::store_failure)
    }

    /// Undoes a payment decision the order's history does not hold: the order was cancelled before
    /// the `paymentdebited` (or `paymentfailed`) could be appended, and it never can be now (either
    /// follows `created` directly, at version 1). A debit's amount goes back to the wallet; a
    /// failure's row is marked voided too, so paymentsdb agrees with the order.
    async fn void_unseen_debit(&self, history: &History) -> Result<(), Failure> {
        if history.order.payment_id.is_some() {
            return Ok(());
        }
        // Without a payment id the order is PaymentFailed (it saw our failure: keep it) or
        // Cancelled from Pending (it saw no decision of ours).
        let cancelled = history.order.status == OrderStatus::Cancelled;
        let voided = ledger::void(&self.pool, history.order.order_id, cancelled)
            .await
            .map_err(ledger_failure)?;
        match voided {
            ledger::Voided::Debit => tracing::info!(
                amount = %history.order.amount,
                "debit voided: the order never saw it, the amount went back to the wallet"
            ),
            ledger::Voided::Failure => {
                tracing::info!("payment failure voided: the order was cancelled before it saw it");
            }
            ledger::Voided::Nothing => {}
        }
        Ok(())
    }

    async fn append(
        &self,
        cause: &EventEnvelope,
        event_id: Uuid,
        event: &OrderEvent,
        expected_version: i64,
    ) -> Result<(), ClientError> {
        let appended = self
            .store
            .append(
                orders::caused_event(cause, event_id, event),
                expected_version,
            )
            .await?;
        tracing::debug!(
            event.type = event.event_type(),
            version = appended.version,
            duplicate = appended.duplicate,
            "appended"
        );
        Ok(())
    }
}

/// The places of `messages` (place, order id) grouped by order, each group in the order given.
fn per_order<'a>(messages: impl IntoIterator<Item = (usize, &'a str)>) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    for (index, order) in messages {
        let group = *group_of.entry(order).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(index);
    }
    groups
}

fn ledger_failure(err: LedgerError) -> Failure {
    match err {
        LedgerError::Sql(err) => Failure::retry(err),
        LedgerError::Inconsistent(message) => Failure::dead_letter(anyhow!(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensations_are_grouped_per_order_and_keep_their_order_within_it() {
        let groups = per_order([(1, "a"), (2, "b"), (4, "a"), (5, "c"), (7, "a"), (9, "b")]);
        assert_eq!(groups, vec![vec![1, 4, 7], vec![2, 9], vec![5]]);
        assert!(per_order([]).is_empty());
    }
}
