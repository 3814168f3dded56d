//! "Wait until the pipeline is drained", once: a wait with a deadline that asks a probe what is
//! still in flight until the answer is nothing, and says how it ended (drained, or timed out with
//! what was still pending). The probes of what every pipeline has in flight (the event store's
//! outbox, a JetStream consumer's undelivered and unacknowledged messages) live here too; a caller
//! adds its own notion of done (the chaos run: every order settled; the benchmark: every consumer
//! of the server, from its monitoring port).

use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use tokio::time::Instant;

/// How a wait for the pipeline to drain ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Drain {
    /// The probe found nothing pending, this long after the wait began.
    Drained { after: Duration },
    /// The deadline came first; `pending` is what the last look found (never empty).
    TimedOut {
        after: Duration,
        pending: Vec<String>,
    },
}

impl Drain {
    pub fn is_drained(&self) -> bool {
        matches!(self, Drain::Drained { .. })
    }

    /// How long the wait took.
    pub fn after(&self) -> Duration {
        match self {
            Drain::Drained { after } | Drain::TimedOut { after, .. } => *after,
        }
    }

    /// What was still in flight when the wait gave up; empty when drained.
    pub fn pending(&self) -> &[String] {
        match self {
            Drain::Drained { .. } => &[],
            Drain::TimedOut { pending, .. } => pending,
        }
    }

    /// How long draining took, or an error that says what was still pending.
    pub fn into_result(self) -> anyhow::Result<Duration> {
        match self {
            Drain::Drained { after } => Ok(after),
            timed_out @ Drain::TimedOut { .. } => Err(anyhow::anyhow!("{timed_out}")),
        }
    }
}

impl fmt::Display for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drain::Drained { after } => write!(f, "drained after {:.1} s", after.as_secs_f64()),
            Drain::TimedOut { after, pending } => write!(
                f,
                "not drained after {:.1} s: {}",
                after.as_secs_f64(),
                pending.join("; ")
            ),
        }
    }
}

/// Asks `pending` what is still in flight, every `every`, until it answers nothing ([`Drain::Drained`])
/// or `timeout` has passed ([`Drain::TimedOut`] with its last answer). The last look is taken at
/// the deadline, so a pipeline that drains just in time counts as drained.
///
/// A probe that fails (a database or a server restarting) has not shown the pipeline idle: its
/// error counts as pending, and it is asked again. A probe that hangs (a connection to a server
/// that is gone) is given up on at the deadline, or `every` after it for the last look, so the
/// wait ends by `timeout + every` whatever the probe does.
pub async fn until_drained(
    timeout: Duration,
    every: Duration,
    mut pending: impl AsyncFnMut() -> anyhow::Result<Vec<String>>,
) -> Drain {
    let began = Instant::now();
    let deadline = began + timeout;
    loop {
        let patience = deadline
            .saturating_duration_since(Instant::now())
            .max(every);
        let left = match tokio::time::timeout(patience, pending()).await {
            Ok(Ok(left)) if left.is_empty() => {
                return Drain::Drained {
                    after: began.elapsed(),
                };
            }
            Ok(Ok(left)) => left,
            Ok(Err(error)) => vec![format!("could not look: {error:#}")],
            Err(_) => vec![format!("could not look: no answer within {patience:?}")],
        };
        let now = Instant::now();
        if now >= deadline {
            return Drain::TimedOut {
                after: began.elapsed(),
                pending: left,
            };
        }
        tokio::time::sleep(every.min(deadline - now)).await;
    }
}

/// The event store's outbox (in `eventstoredb`): events committed and not yet published.
pub async fn outbox(events: &sqlx::PgPool) -> anyhow::Result<Vec<String>> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(events)
        .await?;
    Ok(if count > 0 {
        vec![format!("the outbox holds {count} events")]
    } else {
        Vec::new()
    })
}

/// The durable `consumers` of `stream` that have messages not yet delivered or not yet
/// acknowledged (a consumer acknowledges after its effect committed). A consumer that does not
/// exist is an error: a worker that never bound cannot have drained anything.
pub async fn consumers(
    js: &jetstream::Context,
    stream: &str,
    consumers: &[&str],
) -> anyhow::Result<Vec<String>> {
    let stream_handle = js
        .get_stream(stream)
        .await
        .map_err(|error| anyhow::anyhow!("stream {stream}: {error}"))?;
    let mut left = Vec::new();
    for durable in consumers {
        // Asked fresh each time: num_pending counts what the stream holds at the time of the answer.
        let info = stream_handle
            .consumer_info(*durable)
            .await
            .map_err(|error| anyhow::anyhow!("consumer {durable}: {error}"))?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            left.push(format!(
                "{durable} has {} messages pending and {} unacknowledged",
                info.num_pending, info.num_ack_pending
            ));
        }
    }
    Ok(left)
}
