//! The event store's start-up check: has the stream lost events JetStream acknowledged?
//!
//! An event without an outbox row was acknowledged by JetStream (the relay deletes a row only after
//! the ack), so the stream must hold it. The check counts such events (up to a cap) against the
//! stream's messages, which finds a stream recreated or purged, and looks for the newest few of
//! them among the stream's messages since shortly before the oldest of them, which finds a lost
//! tail (a power loss inside nats-server's sync interval) beyond the cap. Both are cheap.
//!
//! It only says so, loudly: it does not repair. The repair is safe to run at any time, but not
//! at every start by itself: several instances start together and would all publish the same
//! range; a stream just lost usually comes back empty and needs the bootstrapper to recreate it and
//! its consumers first; and a loss of acknowledged messages means the broker's durability settings
//! need an operator's eye, which a silent repair would hide.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use pipeline_runtime::stream::STREAM;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::{CLOCK_SLACK, sql, stream};

/// Newest published events checked.
const SAMPLE: i64 = 32;
/// Published events counted at most.
const COUNT_CAP: i64 = 1_000_000;
/// Messages of the stream read at most.
const MAX_MESSAGES: u64 = 200_000;
/// How long the check waits for NATS at start before giving up on it.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The stream holds at least as many messages as events were published, and the newest ones.
    Whole,
    /// No event was published yet.
    NothingPublished,
    /// The stream does not exist.
    NoStream,
    /// The stream holds fewer messages than events were published (up to the cap): it lost some,
    /// anywhere (recreated, purged, a lost tail).
    Fewer { published: u64, messages: u64 },
    /// The stream lacks `missing` of the `checked` newest published events, the oldest committed at
    /// `since`.
    Tail {
        missing: usize,
        checked: usize,
        since: OffsetDateTime,
    },
    /// Could not tell (too many messages to read).
    Unsure(String),
}

/// Compares the store's published events with the stream: their number (counted up to a cap, in
/// one snapshot taken before the stream's state, so an event published meanwhile cannot make the
/// stream look short) and the ids of the newest few.
pub async fn lost_tail(pool: &PgPool, js: &jetstream::Context) -> anyhow::Result<Tail> {
    let published = sql::count_published(pool, COUNT_CAP).await?;
    let sample = sql::newest_published(pool, SAMPLE).await?;
    let Some(oldest) = sample.iter().map(|(at, _)| *at).min() else {
        return Ok(Tail::NothingPublished);
    };
    let Some(mut orders) = stream::orders(js).await? else {
        return Ok(Tail::NoStream);
    };
    let state = orders.info().await?.state.clone();
    // Duplicates kept beyond the window can only raise the message count: no false alarm.
    if state.messages < published {
        return Ok(Tail::Fewer {
            published,
            messages: state.messages,
        });
    }
    let read = stream::msg_ids(
        &orders,
        DeliverPolicy::ByStartTime {
            start_time: oldest - CLOCK_SLACK,
        },
        state.last_sequence,
        MAX_MESSAGES,
    )
    .await?;
    let missing: Vec<&sql::Key> = sample
        .iter()
        .filter(|(_, id)| !read.ids.contains(id))
        .collect();
    if missing.is_empty() {
        return Ok(Tail::Whole);
    }
    if read.truncated {
        return Ok(Tail::Unsure(format!(
            "more than {MAX_MESSAGES} messages to read since {oldest}"
        )));
    }
    Ok(Tail::Tail {
        missing: missing.len(),
        checked: sample.len(),
        since: missing.iter().map(|(at, _)| *at).min().unwrap_or(oldest),
    })
}

/// Runs [`lost_tail`] once NATS is reachable and logs what it found: an error naming the command
/// to run when the stream lost events.
pub async fn check_at_start(pool: PgPool, nats: async_nats::Client, timeout: Duration) {
    if pipeline_runtime::nats::wait_connected(&nats, CONNECT_WAIT)
        .await
        .is_err()
    {
        tracing::info!("NATS not reachable at start; the check for a lost stream tail is skipped");
        return;
    }
    let mut js = jetstream::new(nats);
    js.set_timeout(timeout);
    match lost_tail(&pool, &js).await {
        Ok(Tail::Whole) => {
            tracing::info!("stream {STREAM} holds the events published to it");
        }
        Ok(Tail::NothingPublished) => {}
        Ok(Tail::NoStream) => tracing::error!(
            "stream {STREAM} does not exist although events were published to it: the broker lost \
             it. Run the bootstrapper (it recreates the streams and consumers), then \
             `eventstore republish --from-start`"
        ),
        Ok(Tail::Fewer {
            published,
            messages,
        }) => tracing::error!(
            published,
            messages,
            "stream {STREAM} holds {messages} messages but {published} events were published to it: \
             the broker lost acknowledged messages (a lost or purged stream, a power loss). Consumers \
             will never see them. Run `eventstore republish --from-start` (after the bootstrapper \
             if the stream or its consumers are gone); see RELIABILITY.md"
        ),
        Ok(Tail::Tail {
            missing,
            checked,
            since,
        }) => tracing::error!(
            missing,
            checked,
            since = %since,
            "stream {STREAM} lacks {missing} of the {checked} newest events JetStream acknowledged: \
             the broker lost acknowledged messages (power loss, lost or purged store). Consumers will \
             never see them. Run `eventstore republish` (add `--since {since}` to cover more, or \
             `--from-start` after losing the whole stream); see RELIABILITY.md"
        ),
        Ok(Tail::Unsure(why)) => {
            tracing::warn!("cannot tell whether stream {STREAM} lost events: {why}");
        }
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot check stream {STREAM} for lost events");
        }
    }
}
