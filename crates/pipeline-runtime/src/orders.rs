//! The order aggregate as the workers see it: an order read back from the event store and folded,
//! the event a message carries, and what each failure means for the message.

use crate::consumer::Failure;
use crate::eventstore::{Appended, ClientError, EventStoreClient, NewEvent};
use crate::stream::EventEnvelope;
use anyhow::anyhow;
use order_domain::{AGGREGATE_TYPE, Order, OrderEvent};
use uuid::Uuid;

/// An order's stored events and the order they fold into.
pub struct History {
    pub events: Vec<(EventEnvelope, OrderEvent)>,
    pub order: Order,
}

impl History {
    /// Reads and folds the order `aggregate_id`.
    ///
    /// A stored event that cannot be read, or a sequence no order can have had, is a message
    /// that breaks the rules (dead letter); an order the store does not know yet is retried.
    pub async fn load(store: &EventStoreClient, aggregate_id: &str) -> Result<History, Failure> {
        let stored = store.events(aggregate_id).await.map_err(store_failure)?;
        let mut events = Vec::with_capacity(stored.len());
        for envelope in stored {
            let event =
                OrderEvent::decode(&envelope.event_type, &envelope.event_data).map_err(|err| {
                    Failure::dead_letter(anyhow!(err).context(format!(
                        "stored event {} of order {aggregate_id} cannot be read",
                        envelope.event_id
                    )))
                })?;
            events.push((envelope, event));
        }
        let order = Order::fold(events.iter().map(|(_, event)| event))
            .map_err(|err| {
                Failure::dead_letter(
                    anyhow!(err).context(format!("order {aggregate_id} cannot be folded")),
                )
            })?
            .ok_or_else(|| {
                Failure::retry(anyhow!(
                    "order {aggregate_id} has no events in the event store"
                ))
            })?;
        Ok(History { events, order })
    }

    /// The id of the newest stored event of one of `types`.
    pub fn last_of(&self, types: &[&str]) -> Option<Uuid> {
        self.events
            .iter()
            .rev()
            .find(|(envelope, _)| types.contains(&envelope.event_type.as_str()))
            .map(|(envelope, _)| envelope.event_id)
    }
}

/// `event`, decided on the message `cause`, as an append to the same order: same correlation,
/// caused by `cause` (see [`EventEnvelope::caused_metadata`]).
pub fn caused_event(cause: &EventEnvelope, event_id: Uuid, event: &OrderEvent) -> NewEvent {
    NewEvent {
        event_id,
        event_type: event.event_type().to_owned(),
        aggregate_id: cause.aggregate_id.clone(),
        aggregate_type: AGGREGATE_TYPE.to_owned(),
        data: event.to_json(),
        metadata: cause.caused_metadata(),
    }
}

/// Decodes the event a message carries. A known type with data that is not that event, or an
/// event of another order than the message's aggregate, can never be handled: dead letter.
pub fn decode_message(envelope: &EventEnvelope) -> Result<OrderEvent, Failure> {
    let event = OrderEvent::decode(&envelope.event_type, &envelope.event_data).map_err(|err| {
        Failure::dead_letter(anyhow!(err).context(format!("message {}", envelope.event_id)))
    })?;
    let aggregate = Uuid::parse_str(&envelope.aggregate_id).ok();
    if envelope.aggregate_type != AGGREGATE_TYPE || aggregate != Some(event.order_id()) {
        return Err(Failure::dead_letter(anyhow!(
            "message {} carries an event of order {} under aggregate {} {:?}",
            envelope.event_id,
            event.order_id(),
            envelope.aggregate_type,
            envelope.aggregate_id
        )));
    }
    Ok(event)
}

/// The outcome of the `position`-th event of an [`EventStoreClient::append_batch`] answer: the
/// event's own outcome, or the failure of the whole call, which is each event's.
pub fn batch_outcome(
    appended: &Result<Vec<Result<Appended, ClientError>>, ClientError>,
    position: usize,
) -> Result<Appended, ClientError> {
    match appended {
        Err(err) => Err(err.clone()),
        Ok(outcomes) => outcomes.get(position).cloned().unwrap_or_else(|| {
            Err(ClientError::Other(format!(
                "the event store gave no outcome for event {position} of the batch"
            )))
        }),
    }
}

/// What an event store error means for the message: retry what may work later, dead-letter what
/// never will.
pub fn store_failure(err: ClientError) -> Failure {
    match err {
        ClientError::Invalid(_) | ClientError::AlreadyExists(_) => Failure::dead_letter(err),
        ClientError::Conflict(_) | ClientError::Unavailable(_) | ClientError::Other(_) => {
            Failure::retry(err)
        }
    }
}
