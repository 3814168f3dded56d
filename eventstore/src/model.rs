//! Events as the store sees them, and the checks every append passes before it reaches SQL.

use std::collections::BTreeMap;

use eventstore_proto as pb;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::StoreError;

/// Streams the store accepts events for. An event of type `t` in stream `S` is published on `S.t`.
pub const KNOWN_STREAMS: &[&str] = &[pipeline_runtime::stream::STREAM];

/// Most events one `CreateEvents` call may carry.
pub const MAX_BATCH_EVENTS: usize = 1024;

/// Bounds on what one append may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_bytes: usize,
}

const MAX_ID_CHARS: usize = 128;
const MAX_NAME_CHARS: usize = 64;
const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_VALUE_CHARS: usize = 1024;

/// An append that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct EventToStore {
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_id: String,
    pub aggregate_type: String,
    pub stream: String,
    pub event_data: serde_json::Value,
    pub metadata: BTreeMap<String, String>,
    pub expected_version: i64,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_id: String,
    pub aggregate_type: String,
    pub aggregate_version: i64,
    pub stream: String,
    pub event_data: serde_json::Value,
    pub metadata: BTreeMap<String, String>,
    pub created_at: OffsetDateTime,
}

/// The result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAt {
    pub version: i64,
    /// The event was already stored; nothing was appended.
    pub duplicate: bool,
}

impl EventToStore {
    /// Checks a `CreateEvent` request. Every refusal is `INVALID_ARGUMENT` naming the field.
    pub fn from_request(
        request: pb::CreateEventRequest,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let invalid = |msg: String| StoreError::InvalidArgument(msg);
        let event = request
            .event
            .ok_or_else(|| invalid("event is required".into()))?;
        if event.event_id.is_empty() {
            return Err(invalid("event.event_id is required".into()));
        }
        let event_id = Uuid::parse_str(&event.event_id).map_err(|_| {
            invalid(format!(
                "event.event_id {:?} is not a UUID",
                truncate(&event.event_id)
            ))
        })?;
        check_name("event.event_type", &event.event_type)?;
        check_text("event.aggregate_id", &event.aggregate_id, MAX_ID_CHARS)?;
        check_name("event.aggregate_type", &event.aggregate_type)?;
        if !KNOWN_STREAMS.contains(&event.stream.as_str()) {
            return Err(invalid(format!(
                "event.stream {:?} is not a known stream (known: {})",
                truncate(&event.stream),
                KNOWN_STREAMS.join(", ")
            )));
        }
        if event.event_data.len() > limits.max_event_bytes {
            return Err(invalid(format!(
                "event.event_data is {} bytes, more than the limit of {} bytes",
                event.event_data.len(),
                limits.max_event_bytes
            )));
        }
        let event_data: serde_json::Value = serde_json::from_str(&event.event_data)
            .map_err(|err| invalid(format!("event.event_data is not valid JSON: {err}")))?;
        if !event_data.is_object() {
            return Err(invalid("event.event_data must be a JSON object".into()));
        }
        if request.expected_version < 0 {
            return Err(invalid(format!(
                "expected_version must be 0 (new aggregate) or more, not {}",
                request.expected_version
            )));
        }
        if event.aggregate_version != 0 && event.aggregate_version != request.expected_version + 1 {
            return Err(invalid(format!(
                "event.aggregate_version is set by the store; if given it must be expected_version + 1 ({}), not {}",
                request.expected_version + 1,
                event.aggregate_version
            )));
        }
        let metadata = check_metadata(event.metadata)?;
        Ok(EventToStore {
            event_id,
            event_type: event.event_type,
            aggregate_id: event.aggregate_id,
            aggregate_type: event.aggregate_type,
            stream: event.stream,
            event_data,
            metadata,
            expected_version: request.expected_version,
        })
    }

    /// Whether `stored` is this very event, appended before (metadata may differ between retries).
    pub fn same_event_as(&self, stored: &StoredEvent) -> bool {
        self.content() == stored.content()
    }

    /// Whether `other` (another append of the same batch) is this very event.
    pub fn same_content(&self, other: &EventToStore) -> bool {
        self.content() == other.content()
    }

    fn content(&self) -> Content<'_> {
        (
            &self.event_type,
            &self.aggregate_id,
            &self.aggregate_type,
            &self.stream,
            &self.event_data,
        )
    }
}

/// What makes two appends the same event: everything but the metadata and the version.
type Content<'a> = (&'a str, &'a str, &'a str, &'a str, &'a serde_json::Value);

impl StoredEvent {
    /// The event as the append transaction stored it at `version`, committed at `created_at`.
    pub fn from_new(event: EventToStore, version: i64, created_at: OffsetDateTime) -> Self {
        StoredEvent {
            event_id: event.event_id,
            event_type: event.event_type,
            aggregate_id: event.aggregate_id,
            aggregate_type: event.aggregate_type,
            aggregate_version: version,
            stream: event.stream,
            event_data: event.event_data,
            metadata: event.metadata,
            created_at,
        }
    }

    fn content(&self) -> Content<'_> {
        (
            &self.event_type,
            &self.aggregate_id,
            &self.aggregate_type,
            &self.stream,
            &self.event_data,
        )
    }

    /// The subject the event is published on.
    pub fn subject(&self) -> String {
        pipeline_runtime::stream::subject(&self.stream, &self.event_type)
    }

    pub fn into_proto(self) -> pb::Event {
        let nanos = self.created_at.unix_timestamp_nanos();
        pb::Event {
            event_id: self.event_id.to_string(),
            event_type: self.event_type,
            aggregate_id: self.aggregate_id,
            aggregate_type: self.aggregate_type,
            event_data: self.event_data.to_string(),
            stream: self.stream,
            aggregate_version: self.aggregate_version,
            metadata: self.metadata.into_iter().collect(),
            created_at: Some(pb::Timestamp {
                seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
                nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
            }),
        }
    }

    pub fn into_envelope(self) -> pipeline_runtime::stream::EventEnvelope {
        pipeline_runtime::stream::EventEnvelope {
            event_id: self.event_id,
            event_type: self.event_type,
            aggregate_id: self.aggregate_id,
            aggregate_type: self.aggregate_type,
            aggregate_version: self.aggregate_version,
            stream: self.stream,
            event_data: self.event_data,
            metadata: self.metadata,
            created_at: self.created_at,
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), StoreError> {
    if value.trim().is_empty() {
        return Err(StoreError::InvalidArgument(format!("{field} is required")));
    }
    if value.chars().count() > max_chars {
        return Err(StoreError::InvalidArgument(format!(
            "{field} is longer than {max_chars} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(StoreError::InvalidArgument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// Names become NATS subject tokens and headers: lowercase letters, digits, `_` and `-`.
fn check_name(field: &str, value: &str) -> Result<(), StoreError> {
    check_text(field, value, MAX_NAME_CHARS)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(StoreError::InvalidArgument(format!(
            "{field} {:?} may hold only lowercase letters, digits, '_' and '-'",
            truncate(value)
        )));
    }
    Ok(())
}

/// Metadata travels in NATS headers: keys are header-safe tokens, values printable text.
fn check_metadata(
    metadata: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, StoreError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(StoreError::InvalidArgument(format!(
            "event.metadata has {} entries, more than {MAX_METADATA_ENTRIES}",
            metadata.len()
        )));
    }
    for (key, value) in &metadata {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_NAME_CHARS
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !key_ok {
            return Err(StoreError::InvalidArgument(format!(
                "event.metadata key {:?} may hold only letters, digits, '_', '-' and '.' (1-{MAX_NAME_CHARS})",
                truncate(key)
            )));
        }
        if value.chars().count() > MAX_METADATA_VALUE_CHARS || value.chars().any(char::is_control) {
            return Err(StoreError::InvalidArgument(format!(
                "event.metadata value of {key:?} must be printable text of at most {MAX_METADATA_VALUE_CHARS} characters"
            )));
        }
    }
    Ok(metadata.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_event_bytes: 1024,
    };

    fn request() -> pb::CreateEventRequest {
        pb::CreateEventRequest {
            event: Some(pb::Event {
                event_id: Uuid::new_v4().to_string(),
                event_type: "created".into(),
                aggregate_id: Uuid::new_v4().to_string(),
                aggregate_type: "order".into(),
                event_data: r#"{"order_id":"x"}"#.into(),
                stream: "ORDERS".into(),
                ..Default::default()
            }),
            expected_version: 0,
        }
    }

    fn refusal(edit: impl FnOnce(&mut pb::CreateEventRequest)) -> String {
        let mut req = request();
        edit(&mut req);
        match EventToStore::from_request(req, LIMITS) {
            Err(StoreError::InvalidArgument(msg)) => msg,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn event(req: &mut pb::CreateEventRequest) -> &mut pb::Event {
        req.event.as_mut().expect("event present")
    }

    #[test]
    fn a_well_formed_request_is_accepted() {
        let new = EventToStore::from_request(request(), LIMITS).expect("valid");
        assert_eq!(new.expected_version, 0);
        assert!(new.event_data.is_object());
    }

    #[test]
    fn each_malformed_field_is_named_in_the_refusal() {
        assert!(refusal(|r| r.event = None).contains("event is required"));
        assert!(refusal(|r| event(r).event_id.clear()).contains("event_id"));
        assert!(refusal(|r| event(r).event_id = "abc".into()).contains("not a UUID"));
        assert!(refusal(|r| event(r).aggregate_id.clear()).contains("aggregate_id"));
        assert!(refusal(|r| event(r).event_type = "Created!".into()).contains("event_type"));
        assert!(refusal(|r| event(r).stream = "PAYMENTS".into()).contains("not a known stream"));
        assert!(refusal(|r| event(r).event_data = "[1,2]".into()).contains("JSON object"));
        assert!(refusal(|r| event(r).event_data = "{".into()).contains("not valid JSON"));
        assert!(
            refusal(|r| event(r).event_data = format!(r#"{{"a":"{}"}}"#, "x".repeat(2000)))
                .contains("limit")
        );
        assert!(refusal(|r| r.expected_version = -1).contains("expected_version"));
        assert!(
            refusal(|r| {
                event(r).metadata.insert("bad key".into(), "v".into());
            })
            .contains("metadata key")
        );
        assert!(
            refusal(|r| {
                event(r)
                    .metadata
                    .insert("traceparent".into(), "a\r\nb".into());
            })
            .contains("printable")
        );
    }

    #[test]
    fn a_replay_with_other_metadata_is_the_same_event() {
        let new = EventToStore::from_request(request(), LIMITS).expect("valid");
        let stored = StoredEvent {
            event_id: new.event_id,
            event_type: new.event_type.clone(),
            aggregate_id: new.aggregate_id.clone(),
            aggregate_type: new.aggregate_type.clone(),
            aggregate_version: 1,
            stream: new.stream.clone(),
            event_data: new.event_data.clone(),
            metadata: BTreeMap::from([("traceparent".into(), "other".into())]),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert!(new.same_event_as(&stored));
        let changed = StoredEvent {
            event_data: serde_json::json!({"order_id": "y"}),
            ..stored
        };
        assert!(!new.same_event_as(&changed));
    }
}

/// Events for the planners' unit tests (the relay's and republish's), which order them by
/// aggregate and version and look at nothing else.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;

    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::StoredEvent;

    pub(crate) fn stored(aggregate: &str, version: i64) -> StoredEvent {
        StoredEvent {
            event_id: Uuid::new_v4(),
            event_type: "created".into(),
            aggregate_id: aggregate.into(),
            aggregate_type: "order".into(),
            aggregate_version: version,
            stream: "ORDERS".into(),
            event_data: serde_json::json!({}),
            metadata: BTreeMap::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// Each chain as (aggregate, version) pairs.
    pub(crate) fn versions(chains: &[Vec<StoredEvent>]) -> Vec<Vec<(String, i64)>> {
        chains
            .iter()
            .map(|chain| {
                chain
                    .iter()
                    .map(|e| (e.aggregate_id.clone(), e.aggregate_version))
                    .collect()
            })
            .collect()
    }
}
