//! The message handler: reviews each paid order once.

use std::collections::BTreeMap;

use anyhow::anyhow;
use order_domain::{AGGREGATE_TYPE, Money, OrderStatus, caused_event_id, event_type};
use pipeline_runtime::consumer::{Delivery, Failure};
use pipeline_runtime::eventstore::{ClientError, EventStoreClient, NewEvent};
use pipeline_runtime::stream::{EventEnvelope, headers};
use tokio::sync::watch;

use crate::history::{self, History};

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
        history::decode_message(envelope)?;
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
                NewEvent {
                    event_id,
                    event_type: event.event_type().to_owned(),
                    aggregate_id: envelope.aggregate_id.clone(),
                    aggregate_type: AGGREGATE_TYPE.to_owned(),
                    data: event.to_json(),
                    metadata: caused_metadata(envelope),
                },
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
            Err(err) => Err(history::store_failure(err)),
        }
    }
}

/// Metadata of an event caused by `cause`: the same correlation, caused by it. Its trace context is
/// not copied from `cause`: the event store client puts in the current one (this delivery's span, a
/// child of the publish of `cause`), so the trace goes on from here.
fn caused_metadata(cause: &EventEnvelope) -> BTreeMap<String, String> {
    let mut metadata: BTreeMap<String, String> = cause
        .metadata
        .iter()
        .filter(|(key, _)| key.as_str() == headers::CORRELATION_ID)
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    metadata
        .entry(headers::CORRELATION_ID.to_owned())
        .or_insert_with(|| cause.aggregate_id.clone());
    metadata.insert(headers::CAUSATION_ID.to_owned(), cause.event_id.to_string());
    metadata
}
