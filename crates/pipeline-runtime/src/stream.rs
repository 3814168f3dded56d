//! The `ORDERS` stream: its name, subjects, message headers and the workers' durable consumers.
//!
//! Defined once here so that the event store (which publishes), the bootstrapper (which creates the
//! streams and consumers, as do the tests) and the workers (which consume) cannot disagree.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType,
};
use order_domain::event_type;
use serde::{Deserialize, Serialize};

/// The JetStream stream every order event is published to.
pub const STREAM: &str = "ORDERS";
/// Subjects of the stream: `ORDERS.<event_type>`.
pub const SUBJECTS: &str = "ORDERS.*";
/// How long JetStream remembers a `Nats-Msg-Id` to drop a republished event.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The stream where workers put messages they gave up on, one subject per worker
/// (`DEADLETTERS.<worker>`), so an operator can list and replay them.
pub const DEAD_LETTER_STREAM: &str = "DEADLETTERS";
/// Subjects of the dead-letter stream.
pub const DEAD_LETTER_SUBJECTS: &str = "DEADLETTERS.>";

/// The dead-letter subject of a worker.
pub fn dead_letter_subject(worker: &str) -> String {
    format!("{DEAD_LETTER_STREAM}.{worker}")
}

/// Core NATS subject (no stream: nothing is stored) on which querymodelworker says, after each
/// commit, which orders of the read model moved and to which version. Readers that wait for the
/// read model (ordersvc's `min_version`, `orderctl load`) listen here instead of re-reading it; a
/// lost notice only delays them until their slow re-read.
pub const READ_MODEL_SUBJECT: &str = "READMODEL.orders";

/// One order of a [`READ_MODEL_SUBJECT`] notice: the read model holds `order_id` at `version`, the
/// last event applied being of `event_type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadModelChange {
    pub order_id: uuid::Uuid,
    pub version: i64,
    pub event_type: String,
}

/// The `ORDERS` stream: every event, on disk, kept (the event store stays the source of truth).
pub fn orders_stream_config(replicas: usize) -> StreamConfig {
    StreamConfig {
        name: STREAM.to_owned(),
        subjects: vec![SUBJECTS.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        // The outbox relay may publish an event again after a crash; JetStream drops the copy by its
        // `Nats-Msg-Id` if it arrives within this window.
        duplicate_window: DUPLICATE_WINDOW,
        max_age: std::time::Duration::ZERO,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The `DEADLETTERS` stream: messages the workers gave up on, kept until an operator replays them.
pub fn dead_letter_stream_config(replicas: usize) -> StreamConfig {
    StreamConfig {
        name: DEAD_LETTER_STREAM.to_owned(),
        subjects: vec![DEAD_LETTER_SUBJECTS.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: std::time::Duration::ZERO,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Message headers set by the event store's outbox relay on every published event.
pub mod headers {
    /// JetStream's de-duplication header; always the event id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const EVENT_TYPE: &str = "Event-Type";
    pub const AGGREGATE_ID: &str = "Aggregate-Id";
    pub const AGGREGATE_TYPE: &str = "Aggregate-Type";
    pub const AGGREGATE_VERSION: &str = "Aggregate-Version";
    /// Event metadata is copied into headers under its own key (`traceparent`, `correlation_id`, ...).
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
}

/// The subject an event of `event_type` is published on, in `stream`.
pub fn subject(stream: &str, event_type: &str) -> String {
    format!("{stream}.{event_type}")
}

/// The body of every message on the stream: the stored event, self-contained so that a message taken
/// from a dead-letter place can be understood and replayed without the headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub aggregate_id: String,
    pub aggregate_type: String,
    pub aggregate_version: i64,
    pub stream: String,
    pub event_data: serde_json::Value,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
}

impl EventEnvelope {
    /// Metadata of an event caused by this one: the same correlation, caused by it. Its trace
    /// context is not copied: the event store client puts in the current one (the delivery's span,
    /// a child of the publish of this event), so the trace goes on from there.
    pub fn caused_metadata(&self) -> BTreeMap<String, String> {
        let mut metadata: BTreeMap<String, String> = self
            .metadata
            .iter()
            .filter(|(key, _)| key.as_str() == headers::CORRELATION_ID)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        metadata
            .entry(headers::CORRELATION_ID.to_owned())
            .or_insert_with(|| self.aggregate_id.clone());
        metadata.insert(headers::CAUSATION_ID.to_owned(), self.event_id.to_string());
        metadata
    }
}

/// A durable pull consumer of one worker; every instance of the worker shares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Durable name, also the worker's binary name.
    pub durable: &'static str,
    /// The one filter subject nats-server 2.9 takes per consumer.
    pub filter_subject: &'static str,
    /// The event types the worker acts on, where they are fewer than `filter_subject` covers. On
    /// a server that filters a consumer on several subjects (nats-server 2.10 and later) the
    /// consumer takes only their subjects, so the others are never delivered; on 2.9 the worker
    /// acks the others unseen ([`crate::consumer::Options::handles`]).
    pub handles: Option<&'static [&'static str]>,
    /// How long a delivered message may stay un-acked before it is delivered again.
    pub ack_wait: Duration,
    /// Upper bound of un-acked messages across all instances.
    pub max_ack_pending: i64,
}

/// The workers' consumers. No `max_deliver`: workers dead-letter by delivery count themselves, because
/// nats-server 2.9 can stall a consumer at `max_deliver`.
pub const CONSUMERS: &[ConsumerSpec] = &[
    ConsumerSpec {
        durable: "paymentworker",
        filter_subject: SUBJECTS,
        // An approved order's `paymentdebited` and `approved` are not its business.
        handles: Some(&[
            event_type::CREATED,
            event_type::REJECTED,
            event_type::CANCELLED,
        ]),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    },
    ConsumerSpec {
        durable: "reviewworker",
        filter_subject: "ORDERS.paymentdebited",
        handles: None,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    },
    ConsumerSpec {
        durable: "querymodelworker",
        filter_subject: SUBJECTS,
        handles: None,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    },
];

/// Looks up a consumer by its durable name.
pub fn consumer(durable: &str) -> Option<&'static ConsumerSpec> {
    CONSUMERS.iter().find(|spec| spec.durable == durable)
}

/// Whether a nats-server of `version` (as its INFO gives it: `2.10.7`, `2.11.0-RC.1`) takes
/// several filter subjects per consumer: 2.10 and later. An unknown version does not.
pub fn filters_several_subjects(version: &str) -> bool {
    let mut numbers = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (2, 10),
        _ => false,
    }
}

impl ConsumerSpec {
    /// The JetStream configuration the bootstrapper creates and the workers bind to, for the
    /// server `client` is connected to: on one that filters on several subjects (see
    /// [`filters_several_subjects`]) only the subjects of [`ConsumerSpec::handles`].
    pub fn config_for(
        &self,
        client: &async_nats::Client,
    ) -> async_nats::jetstream::consumer::pull::Config {
        self.config(filters_several_subjects(&client.server_info().version))
    }

    /// The JetStream configuration, for a server that filters a consumer on several subjects or
    /// on one only.
    pub fn config(&self, several_filters: bool) -> async_nats::jetstream::consumer::pull::Config {
        let (filter_subject, filter_subjects) = match self.handles {
            Some(types) if several_filters => (
                String::new(),
                types
                    .iter()
                    .map(|event_type| subject(STREAM, event_type))
                    .collect(),
            ),
            _ => (self.filter_subject.to_owned(), Vec::new()),
        };
        async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(self.durable.to_owned()),
            filter_subject,
            filter_subjects,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_survives_a_json_round_trip() {
        let envelope = EventEnvelope {
            event_id: uuid::Uuid::new_v4(),
            event_type: "created".into(),
            aggregate_id: "a1".into(),
            aggregate_type: "order".into(),
            aggregate_version: 1,
            stream: STREAM.into(),
            event_data: serde_json::json!({"order_id": "a1"}),
            metadata: BTreeMap::from([("traceparent".to_owned(), "00-ab-cd-01".to_owned())]),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let json = serde_json::to_vec(&envelope).expect("serialises");
        let back: EventEnvelope = serde_json::from_slice(&json).expect("deserialises");
        assert_eq!(back, envelope);
    }

    #[test]
    fn servers_from_2_10_filter_on_several_subjects() {
        for (version, several) in [
            ("2.9.10", false),
            ("2.9.25", false),
            ("2.10.0", true),
            ("2.10.7", true),
            ("2.11.0-RC.1", true),
            ("2.15.1", true),
            ("3.0.0", true),
            ("v2.12.1", true),
            ("1.4.1", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(filters_several_subjects(version), several, "{version:?}");
        }
    }

    #[test]
    fn paymentworker_takes_only_its_subjects_where_the_server_can_filter_on_several() {
        let spec = consumer("paymentworker").expect("defined");
        // Expected on 2.10+: the three subjects it acts on, and no single filter beside them
        // (a server refuses both at once).
        let several = spec.config(true);
        assert_eq!(several.filter_subject, "");
        assert_eq!(
            several.filter_subjects,
            ["ORDERS.created", "ORDERS.rejected", "ORDERS.cancelled"]
        );
        // Expected on 2.9: the stream's subjects; the worker acks the others unseen.
        let one = spec.config(false);
        assert_eq!(one.filter_subject, SUBJECTS);
        assert!(one.filter_subjects.is_empty());
        // The workers that act on all they get keep their one filter on every server.
        for name in ["reviewworker", "querymodelworker"] {
            let spec = consumer(name).expect("defined");
            assert_eq!(spec.config(true).filter_subject, spec.filter_subject);
            assert!(spec.config(true).filter_subjects.is_empty());
        }
    }

    #[test]
    fn every_worker_has_one_consumer_on_the_stream() {
        for name in ["paymentworker", "reviewworker", "querymodelworker"] {
            let spec = consumer(name).expect("defined");
            assert!(spec.filter_subject.starts_with("ORDERS."));
        }
        assert_eq!(subject(STREAM, "created"), "ORDERS.created");
    }
}
