//! The message handler: reviews each paid order once.
//!
//! A batch of `paymentdebited` messages is decided from the messages alone (each debit carries the
//! amount the review needs) and appended in one `CreateEvents` call, each decision expecting the
//! debit's version: the event store refuses a decision about an order that moved on since (the
//! customer cancelled). Only such a conflict reads the order's history, to tell a lost race (handled)
//! from something to retry.

use anyhow::anyhow;
use order_domain::{Money, OrderEvent, OrderStatus, caused_event_id, review_debit};
use pipeline_runtime::consumer::{Delivery, Failure};
use pipeline_runtime::eventstore::{BatchAppend, ClientError, EventStoreClient};
use pipeline_runtime::stream::EventEnvelope;
#[cfg(feature = "test-util")]
use tokio::sync::watch;
use tracing::Instrument as _;

use pipeline_runtime::orders::{self, History};

/// Everything a message needs; shared by the messages in hand.
pub struct Worker {
    pub store: EventStoreClient,
    pub max_amount: Money,
    #[cfg(feature = "test-util")]
    pub hold: Option<watch::Receiver<bool>>,
}

impl Worker {
    /// Reviews a batch: one outcome per delivery, in order.
    pub async fn handle_batch(&self, deliveries: Vec<Delivery>) -> Vec<Result<(), Failure>> {
        #[cfg(feature = "test-util")]
        if let Some(hold) = &self.hold {
            // Test seam: a closed channel releases the hold too.
            let _ = hold.clone().wait_for(|held| !*held).await;
        }
        let mut outcomes: Vec<Option<Result<(), Failure>>> = Vec::with_capacity(deliveries.len());
        // (index in the batch, the decision) of every delivery that has one to append.
        let mut decided = Vec::new();
        let mut appends = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            let envelope = &delivery.envelope;
            let debit = match orders::decode_message(envelope) {
                Ok(OrderEvent::PaymentDebited(debit)) => debit,
                // Only debits are reviewed (the consumer's filter lets nothing else through).
                Ok(_) => {
                    outcomes.push(Some(Ok(())));
                    continue;
                }
                Err(failure) => {
                    outcomes.push(Some(Err(failure)));
                    continue;
                }
            };
            let event = review_debit(&debit, self.max_amount);
            let event_id = caused_event_id(envelope.event_id, event.event_type());
            appends.push(BatchAppend {
                event: orders::caused_event(envelope, event_id, &event),
                expected_version: envelope.aggregate_version,
                parent: delivery.span.clone(),
            });
            decided.push((index, event));
            outcomes.push(None);
        }
        if !appends.is_empty() {
            let appended = self.store.append_batch(appends).await;
            for (position, (index, event)) in decided.into_iter().enumerate() {
                let delivery = &deliveries[index];
                let result = match orders::batch_outcome(&appended, position) {
                    Ok(appended) => {
                        tracing::debug!(
                            parent: &delivery.span,
                            event.type = event.event_type(),
                            version = appended.version,
                            duplicate = appended.duplicate,
                            "reviewed"
                        );
                        Ok(())
                    }
                    Err(ClientError::Conflict(message)) => {
                        self.after_conflict(&delivery.envelope, &message)
                            .instrument(delivery.span.clone())
                            .await
                    }
                    Err(err) => Err(orders::store_failure(err)),
                };
                outcomes[index] = Some(result);
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Ok(())))
            .collect()
    }

    /// The decision lost a race: the order is no longer at the debit's version. Cancelled or
    /// reviewed already is a handled outcome; still Paid is something to retry on the fresh state.
    async fn after_conflict(&self, envelope: &EventEnvelope, message: &str) -> Result<(), Failure> {
        let history = History::for_message(&self.store, &envelope.aggregate_id).await?;
        if history.order.status == OrderStatus::Paid {
            return Err(Failure::retry(anyhow!(
                "version conflict on a Paid order: {message}"
            )));
        }
        tracing::info!(status = %history.order.status, "the order moved on before the review");
        Ok(())
    }
}
