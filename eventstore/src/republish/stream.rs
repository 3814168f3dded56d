//! What the `ORDERS` stream holds, read as the `Nats-Msg-Id`s of its messages: an ordered
//! consumer with headers only, so a long range costs little more than its headers.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode, stream::Stream};
use futures::StreamExt as _;
use pipeline_runtime::stream::{STREAM, headers};
use uuid::Uuid;

/// Longest wait for the next message of a range the stream said it holds.
const IDLE: Duration = Duration::from_secs(30);

/// The `ORDERS` stream, or `None` when it does not exist.
pub async fn orders(js: &jetstream::Context) -> anyhow::Result<Option<Stream>> {
    match js.get_stream(STREAM).await {
        Ok(stream) => Ok(Some(stream)),
        Err(err) if matches!(err.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND) => {
            Ok(None)
        }
        Err(err) => Err(err).with_context(|| format!("cannot look up stream {STREAM}")),
    }
}

/// The event ids of one range of the stream.
#[derive(Debug, Default)]
pub struct Ids {
    pub ids: HashSet<Uuid>,
    /// Messages read.
    pub messages: u64,
    /// Messages without a `Nats-Msg-Id` that is a UUID (not the relay's).
    pub foreign: u64,
    /// Reading stopped at `limit` messages before the range's end.
    pub truncated: bool,
}

/// The `Nats-Msg-Id`s of the messages from `from` up to sequence `until` (included), at most
/// `limit` messages.
pub async fn msg_ids(
    stream: &Stream,
    from: DeliverPolicy,
    until: u64,
    limit: u64,
) -> anyhow::Result<Ids> {
    let mut found = Ids::default();
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: from,
            headers_only: true,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot read stream {STREAM}"))?;
    if consumer.cached_info().num_pending == 0 || until == 0 {
        return Ok(found);
    }
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("cannot read stream {STREAM}"))?;
    loop {
        let message = tokio::time::timeout(IDLE, messages.next())
            .await
            .with_context(|| format!("stream {STREAM} sent nothing for {IDLE:?}"))?
            .with_context(|| format!("reading stream {STREAM} ended early"))?
            .with_context(|| format!("reading stream {STREAM}"))?;
        let info = message
            .info()
            .map_err(|err| anyhow::anyhow!("a message of {STREAM} without its info: {err}"))?;
        if info.stream_sequence > until {
            break;
        }
        found.messages += 1;
        match event_id(message.headers.as_ref()) {
            Some(id) => {
                found.ids.insert(id);
            }
            None => found.foreign += 1,
        }
        if info.stream_sequence >= until || info.pending == 0 {
            break;
        }
        if found.messages >= limit {
            found.truncated = true;
            break;
        }
    }
    Ok(found)
}

/// The event id a message carries in its `Nats-Msg-Id`.
pub fn event_id(message_headers: Option<&async_nats::HeaderMap>) -> Option<Uuid> {
    message_headers?
        .get(headers::MSG_ID)
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
}
