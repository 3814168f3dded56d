//! Dead letters: messages a worker gave up on, kept in the `DEADLETTERS` stream (one subject per
//! worker) so an operator can list them and replay them once the cause is fixed.

use anyhow::Context as _;
use async_nats::jetstream;

use crate::stream::{STREAM, dead_letter_subject, headers};

/// Headers a dead letter carries besides the original message's own.
pub mod dl_headers {
    pub const REASON: &str = "Dead-Letter-Reason";
    pub const SUBJECT: &str = "Dead-Letter-Subject";
    pub const DELIVERIES: &str = "Dead-Letter-Deliveries";
    pub const STREAM_SEQUENCE: &str = "Dead-Letter-Stream-Sequence";
    pub const WORKER: &str = "Dead-Letter-Worker";
}

/// A dead letter as listed for an operator.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Sequence in the `DEADLETTERS` stream; names the letter for `replay`.
    pub sequence: u64,
    pub worker: String,
    pub subject: String,
    pub reason: String,
    pub deliveries: String,
    pub event_id: Option<String>,
    pub payload: bytes::Bytes,
    pub headers: async_nats::HeaderMap,
}

/// Copies `message` into `DEADLETTERS.<worker>` and waits for the stream's acknowledgement.
pub async fn publish(
    js: &jetstream::Context,
    worker: &str,
    message: &jetstream::Message,
    delivered: i64,
    reason: &str,
) -> anyhow::Result<()> {
    let mut letter_headers = message.headers.clone().unwrap_or_default();
    let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
    // Dead-lettering the same delivery twice (a lost ack) stores one letter.
    letter_headers.insert(headers::MSG_ID, format!("{worker}-{sequence}").as_str());
    // Header values cannot hold line breaks.
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    letter_headers.insert(dl_headers::REASON, reason.as_str());
    letter_headers.insert(dl_headers::SUBJECT, message.subject.as_str());
    letter_headers.insert(dl_headers::DELIVERIES, delivered.to_string().as_str());
    letter_headers.insert(dl_headers::STREAM_SEQUENCE, sequence.to_string().as_str());
    letter_headers.insert(dl_headers::WORKER, worker);
    js.publish_with_headers(
        dead_letter_subject(worker),
        letter_headers,
        message.payload.clone(),
    )
    .await
    .context("publishing the dead letter")?
    .await
    .context("the dead-letter stream did not acknowledge")?;
    Ok(())
}

/// Every dead letter, of one worker or of all, oldest first.
pub async fn list(
    js: &jetstream::Context,
    worker: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut stream = js
        .get_stream(crate::stream::DEAD_LETTER_STREAM)
        .await
        .context("the DEADLETTERS stream is missing (has the bootstrapper run?)")?;
    let state = stream
        .info()
        .await
        .context("reading the DEADLETTERS stream")?
        .state
        .clone();
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        // Replayed letters are deleted, leaving holes in the sequence.
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        let letter = DeadLetter {
            sequence,
            worker: header(dl_headers::WORKER),
            subject: header(dl_headers::SUBJECT),
            reason: header(dl_headers::REASON),
            deliveries: header(dl_headers::DELIVERIES),
            event_id: serde_json::from_slice::<serde_json::Value>(&message.payload)
                .ok()
                .and_then(|v| {
                    v.get("event_id")
                        .and_then(|id| id.as_str())
                        .map(str::to_owned)
                }),
            payload: message.payload.clone(),
            headers: message.headers.clone(),
        };
        if worker.is_none_or(|w| w == letter.worker) {
            letters.push(letter);
        }
    }
    Ok(letters)
}

/// Puts a dead letter back on its original subject, then deletes it from `DEADLETTERS`.
///
/// The replay carries a fresh `Nats-Msg-Id` (JetStream would drop it as a duplicate of the original
/// otherwise) and reaches every consumer of that subject; consumers are idempotent, so only the one
/// that failed does anything.
pub async fn replay(js: &jetstream::Context, letter: &DeadLetter) -> anyhow::Result<()> {
    anyhow::ensure!(
        letter.subject.starts_with(&format!("{STREAM}.")),
        "dead letter {} has no original subject on {STREAM}",
        letter.sequence
    );
    let mut replay_headers = letter.headers.clone();
    replay_headers.insert(
        headers::MSG_ID,
        format!("replay-{}-{}", letter.worker, letter.sequence).as_str(),
    );
    js.publish_with_headers(
        letter.subject.clone(),
        replay_headers,
        letter.payload.clone(),
    )
    .await
    .context("publishing the replay")?
    .await
    .context("the stream did not acknowledge the replay")?;
    let stream = js.get_stream(crate::stream::DEAD_LETTER_STREAM).await?;
    stream
        .delete_message(letter.sequence)
        .await
        .with_context(|| {
            format!(
                "replayed, but could not delete dead letter {}",
                letter.sequence
            )
        })?;
    Ok(())
}
