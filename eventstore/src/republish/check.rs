//! The event store's start-up check: has the stream lost events JetStream acknowledged?
//!
//! An event without an outbox row was acknowledged by JetStream (the relay deletes a row only after
//! the ack), so the stream must hold it. The check takes the newest such events of the store and
//! looks for their ids in the stream's messages since shortly before the oldest of them: cheap,
//! and a stream that lost its tail (a power loss inside nats-server's sync interval, a lost store
//! folder, a purge) lacks exactly these.
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
/// Messages of the stream read at most.
const MAX_MESSAGES: u64 = 200_000;
/// How long the check waits for NATS at start before giving up on it.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The stream holds the newest published events (`checked` of them).
    Whole { checked: usize },
    /// No event was published yet.
    NothingPublished,
    /// The stream does not exist.
    NoStream,
    /// The stream lacks `missing` of the `checked` newest published events, the oldest committed at
    /// `since`.
    Lost {
        missing: usize,
        checked: usize,
        since: OffsetDateTime,
    },
    /// Could not tell (too many messages to read).
    Unsure(String),
}

/// Compares the newest published events of the store with the stream.
pub async fn lost_tail(pool: &PgPool, js: &jetstream::Context) -> anyhow::Result<Tail> {
    let sample = sql::newest_published(pool, SAMPLE).await?;
    let Some(oldest) = sample.iter().map(|(at, _)| *at).min() else {
        return Ok(Tail::NothingPublished);
    };
    let Some(mut orders) = stream::orders(js).await? else {
        return Ok(Tail::NoStream);
    };
    let last = orders.info().await?.state.last_sequence;
    let read = stream::msg_ids(
        &orders,
        DeliverPolicy::ByStartTime {
            start_time: oldest - CLOCK_SLACK,
        },
        last,
        MAX_MESSAGES,
    )
    .await?;
    let missing: Vec<&sql::Key> = sample
        .iter()
        .filter(|(_, id)| !read.ids.contains(id))
        .collect();
    if missing.is_empty() {
        return Ok(Tail::Whole {
            checked: sample.len(),
        });
    }
    if read.truncated {
        return Ok(Tail::Unsure(format!(
            "more than {MAX_MESSAGES} messages to read since {oldest}"
        )));
    }
    Ok(Tail::Lost {
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
        Ok(Tail::Whole { checked }) => {
            tracing::info!(checked, "stream {STREAM} holds the newest published events");
        }
        Ok(Tail::NothingPublished) => {}
        Ok(Tail::NoStream) => tracing::error!(
            "stream {STREAM} does not exist although events were published to it: the broker lost \
             it. Run the bootstrapper (it recreates the streams and consumers), then \
             `eventstore republish --from-start`"
        ),
        Ok(Tail::Lost {
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
