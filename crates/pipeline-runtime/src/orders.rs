//! The one repository of orders: reading an order back from the event store and folding it
//! ([`History::load`]), and stamping its next event ([`new_event`]: id, correlation, causation;
//! the event store client adds the trace context). ordersvc, the workers, deadlinewatcher and the
//! tests' harness all go through it; each maps a [`LoadError`] once, to its own transport.
//! Also what a worker's message means: the event it carries and what each failure does to it.

use std::collections::BTreeMap;

use crate::consumer::Failure;
use crate::eventstore::{Appended, ClientError, EventStoreClient, NewEvent};
use crate::stream::{EventEnvelope, headers};
use anyhow::anyhow;
use order_domain::{AGGREGATE_TYPE, Order, OrderEvent};
use uuid::Uuid;

/// Why an order could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The event store did not answer, or refused the read.
    #[error(transparent)]
    Store(#[from] ClientError),
    /// A stored event is no order event, or the events make no order that can have existed: the
    /// store holds what the code cannot read, which no retry changes.
    #[error("order {order_id} cannot be read back from the event store: {reason}")]
    Unreadable { order_id: String, reason: String },
}

/// An order's stored events and the order they fold into.
pub struct History {
    pub events: Vec<(EventEnvelope, OrderEvent)>,
    pub order: Order,
}

impl History {
    /// Reads and folds the order `aggregate_id`, in the current trace; `None` when it has no
    /// events (yet).
    pub async fn load(
        store: &EventStoreClient,
        aggregate_id: &str,
    ) -> Result<Option<History>, LoadError> {
        Self::fold(aggregate_id, store.events(aggregate_id).await?)
    }

    /// [`History::load`] outside any trace: for reads that mostly lead to no action (the
    /// deadline watcher's), which would otherwise add a span to every order's trace.
    pub async fn load_untraced(
        store: &EventStoreClient,
        aggregate_id: &str,
    ) -> Result<Option<History>, LoadError> {
        Self::fold(aggregate_id, store.events_untraced(aggregate_id).await?)
    }

    fn fold(aggregate_id: &str, stored: Vec<EventEnvelope>) -> Result<Option<History>, LoadError> {
        let unreadable = |reason: String| LoadError::Unreadable {
            order_id: aggregate_id.to_owned(),
            reason,
        };
        let mut events = Vec::with_capacity(stored.len());
        for envelope in stored {
            let event =
                OrderEvent::decode(&envelope.event_type, &envelope.event_data).map_err(|err| {
                    unreadable(format!(
                        "event v{} ({}): {err}",
                        envelope.aggregate_version, envelope.event_id
                    ))
                })?;
            events.push((envelope, event));
        }
        let order = Order::fold(events.iter().map(|(_, event)| event))
            .map_err(|err| unreadable(err.to_string()))?;
        Ok(order.map(|order| History { events, order }))
    }

    /// [`History::load`] for a worker's message: an order the store does not know yet is retried
    /// (its event may be on its way), one that cannot be read is dead-lettered.
    pub async fn for_message(
        store: &EventStoreClient,
        aggregate_id: &str,
    ) -> Result<History, Failure> {
        Self::load(store, aggregate_id)
            .await
            .map_err(message_failure)?
            .ok_or_else(|| {
                Failure::retry(anyhow!(
                    "order {aggregate_id} has no events in the event store"
                ))
            })
    }

    /// The newest stored event: for an open order, the one that opened its status.
    pub fn last(&self) -> Option<&EventEnvelope> {
        self.events.last().map(|(envelope, _)| envelope)
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

/// What an event is stamped with besides its data.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    /// A client's request (a new order, a cancel): the order's id is the correlation, nothing
    /// caused it.
    Request,
    /// A stored or delivered event it follows from: the same correlation, caused by that event.
    Event(&'a EventEnvelope),
}

/// `event` as the next append to its order, under `event_id`. The event store client adds the
/// current trace context (`traceparent`), so the trace goes on from the request or delivery.
pub fn new_event(event_id: Uuid, event: &OrderEvent, cause: Cause<'_>) -> NewEvent {
    let order_id = event.order_id();
    let metadata = match cause {
        Cause::Request => {
            BTreeMap::from([(headers::CORRELATION_ID.to_owned(), order_id.to_string())])
        }
        Cause::Event(envelope) => envelope.caused_metadata(),
    };
    NewEvent {
        event_id,
        event_type: event.event_type().to_owned(),
        aggregate_id: order_id.to_string(),
        aggregate_type: AGGREGATE_TYPE.to_owned(),
        data: event.to_json(),
        metadata,
    }
}

/// `event`, decided on the message `cause`, as an append to the same order.
pub fn caused_event(cause: &EventEnvelope, event_id: Uuid, event: &OrderEvent) -> NewEvent {
    new_event(event_id, event, Cause::Event(cause))
}

/// What a [`LoadError`] means for a worker's message: the store's errors as [`store_failure`],
/// an unreadable order a dead letter.
pub fn message_failure(err: LoadError) -> Failure {
    match err {
        LoadError::Store(err) => store_failure(err),
        unreadable @ LoadError::Unreadable { .. } => Failure::dead_letter(unreadable),
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
