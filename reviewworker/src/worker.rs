//! The message handler: reviews each paid order once.

use anyhow::anyhow;
use order_domain::{Money, OrderStatus, caused_event_id, event_type};
use pipeline_runtime::consumer::{Delivery, Failure};
use pipeline_runtime::eventstore::{ClientError, EventStoreClient};
use pipeline_runtime::stream::EventEnvelope;
use tokio::sync::watch;

use pipeline_runtime::orders::{self, History};

/// Everything a message needs; shared by the messages in hand.
pub struct Worker {
    pub store: EventStoreClient,
    pub max_amount: Money,
    pub hold: Option<watch::Receiver<bool>>,
}

impl Worker {
    pub async fn handle(&self, delivery: Delivery) -> Result<(), Failure> {
        let envelope = &delivery.envelope;
        if envelope.event_type != event_type::PAYMENT_DEBITED {
            return Ok(());
        }
        if let Some(hold) = &self.hold {
            // Test seam: a closed channel releases the hold too.
            let _ = hold.clone().wait_for(|held| !*held).await;
        }
        orders::decode_message(envelope)?;
        self.on_payment_debited(envelope).await
    }

    #[tracing::instrument(skip_all, fields(order.id = %envelope.aggregate_id))]
    async fn on_payment_debited(&self, envelope: &EventEnvelope) -> Result<(), Failure> {
        let history = History::load(&self.store, &envelope.aggregate_id).await?;
        let order = &history.order;
        if order.status != OrderStatus::Paid {
            // Reviewed already, or cancelled before the review: nothing to decide.
            tracing::debug!(status = %order.status, "not Paid, left alone");
            return Ok(());
        }
        let cause = history
            .last_of(&[event_type::PAYMENT_DEBITED])
            .ok_or_else(|| Failure::dead_letter(anyhow!("a Paid order without its debit")))?;
        let event = order.review(self.max_amount).map_err(Failure::retry)?;
        let event_id = caused_event_id(cause, event.event_type());
        let appended = self
            .store
            .append(
                orders::caused_event(envelope, event_id, &event),
                order.version,
            )
            .await;
        match appended {
            Ok(appended) => {
                tracing::info!(
                    event.type = event.event_type(),
                    version = appended.version,
                    duplicate = appended.duplicate,
                    "reviewed"
                );
                Ok(())
            }
            Err(ClientError::Conflict(message)) => {
                // Lost a race: the customer cancelled first (handled), or something we cannot
                // explain yet (retry on the fresh state).
                let history = History::load(&self.store, &envelope.aggregate_id).await?;
                if history.order.status == OrderStatus::Paid {
                    return Err(Failure::retry(anyhow!(
                        "version conflict on a Paid order: {message}"
                    )));
                }
                tracing::info!(status = %history.order.status, "the order moved on before the review");
                Ok(())
            }
            Err(err) => Err(orders::store_failure(err)),
        }
    }
}
