//! How a message is settled once its handler answered: acked, `nak`ed with a delay, or
//! dead-lettered; and which failures are outages of a dependency rather than the message's fault.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

use super::Options;
use crate::{db, deadletter, eventstore, tracecontext};

/// The longest `nak` delay while a dependency is down: how soon after an outage ends a message that
/// waited for it is handled.
pub const OUTAGE_MAX_DELAY: Duration = Duration::from_secs(5);

/// Whether `err` says a dependency cannot be reached (the event store or its database, a database
/// of the worker's own) rather than that this message cannot be handled: anywhere in its chain, an
/// [`eventstore::ClientError`] that is transient or a `sqlx::Error` that [`db::is_unavailable`].
pub fn is_outage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<eventstore::ClientError>()
            .is_some_and(eventstore::ClientError::is_transient)
            || cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(db::is_unavailable)
    })
}

/// What a handler reports when it could not handle a message.
#[derive(Debug)]
pub enum Failure {
    /// Try again later (database or event store down, a race lost).
    Retry(anyhow::Error),
    /// Never going to work (a message that breaks the rules): dead-letter it now.
    DeadLetter(anyhow::Error),
}

impl Failure {
    pub fn retry(err: impl Into<anyhow::Error>) -> Self {
        Failure::Retry(err.into())
    }

    pub fn dead_letter(err: impl Into<anyhow::Error>) -> Self {
        Failure::DeadLetter(err.into())
    }

    /// This failure once for each of `count` messages: a batch that failed as a whole. Each copy
    /// keeps the cause as its source, so [`is_outage`] still sees what failed.
    pub fn for_each(self, count: usize) -> Vec<Failure> {
        let (dead, err) = match self {
            Failure::Retry(err) => (false, err),
            Failure::DeadLetter(err) => (true, err),
        };
        let shared = Arc::new(err);
        (0..count)
            .map(|_| {
                let err = anyhow::Error::new(BatchFailed(Arc::clone(&shared)));
                if dead {
                    Failure::DeadLetter(err)
                } else {
                    Failure::Retry(err)
                }
            })
            .collect()
    }
}

/// The failure of a whole batch, shared by each of its messages.
#[derive(Debug)]
struct BatchFailed(Arc<anyhow::Error>);

impl std::fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the batch failed")
    }
}

impl std::error::Error for BatchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause: &(dyn std::error::Error + Send + Sync + 'static) = &**self.0;
        Some(cause)
    }
}

/// Acks a message whose effect is committed. A plain ack (no confirmation round trip): an ack that
/// is lost brings the message back after its ack wait, and the idempotent handler absorbs it.
pub(super) async fn ack(message: &jetstream::Message) {
    if let Err(err) = message.ack().await {
        tracing::warn!(error = %err, "ack failed; the message will be delivered again");
    }
}

pub(super) async fn settle(
    js: &jetstream::Context,
    worker: &str,
    options: &Options,
    message: jetstream::Message,
    delivered: i64,
    outcome: Result<(), Failure>,
    span: tracing::Span,
) {
    let message = &message;
    match outcome {
        Ok(()) => ack(message).await,
        Err(Failure::Retry(err)) if is_outage(&err) => {
            // Not the message's fault: no delivery counts toward its dead letter while this lasts.
            tracecontext::mark_error(&span, format!("{err:#}"));
            let delay = options.delay(delivered).min(OUTAGE_MAX_DELAY);
            tracing::warn!(
                error = format!("{err:#}"),
                ?delay,
                delivered,
                "a dependency is unavailable; will retry until it is back"
            );
            nak(message, delay).await;
        }
        Err(Failure::Retry(err)) if delivered < options.max_deliveries => {
            tracecontext::mark_error(&span, format!("{err:#}"));
            let delay = options.delay(delivered);
            tracing::warn!(
                error = format!("{err:#}"),
                ?delay,
                "handling failed; will retry"
            );
            nak(message, delay).await;
        }
        Err(Failure::Retry(err)) => {
            tracecontext::mark_error(&span, format!("{err:#}"));
            let reason = format!("gave up after {delivered} deliveries: {err:#}");
            give_up(js, worker, message, delivered, &reason).await;
        }
        Err(Failure::DeadLetter(err)) => {
            tracecontext::mark_error(&span, format!("{err:#}"));
            give_up(js, worker, message, delivered, &format!("{err:#}")).await;
        }
    }
}

/// Hands the message back for redelivery after `delay`.
async fn nak(message: &jetstream::Message, delay: Duration) {
    if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(error = %err, "nak failed; the message comes back after its ack wait");
    }
}

pub(super) async fn give_up(
    js: &jetstream::Context,
    worker: &str,
    message: &jetstream::Message,
    delivered: i64,
    reason: &str,
) {
    tracing::error!(worker, subject = %message.subject, delivered, reason, "dead-lettering message");
    match deadletter::publish(js, worker, message, delivered, reason).await {
        Ok(()) => {
            if let Err(err) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %err, "terminating a dead-lettered message failed; it may come back");
            }
        }
        Err(err) => {
            tracing::error!(
                error = format!("{err:#}"),
                "cannot dead-letter; will retry later"
            );
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependency_that_is_down_is_an_outage_and_a_message_that_fails_is_not() {
        use crate::eventstore::ClientError;
        use anyhow::{Context as _, anyhow};

        let store_down = anyhow::Error::from(ClientError::Unavailable("connection refused".into()));
        assert!(is_outage(&store_down));
        assert!(
            is_outage(&store_down.context("reading order 42")),
            "found under context too"
        );
        let db_down: Result<(), sqlx::Error> = Err(sqlx::Error::PoolTimedOut);
        let db_down = db_down.context("paymentsdb").expect_err("an error");
        assert!(is_outage(&db_down));

        let copies = Failure::retry(anyhow::Error::from(sqlx::Error::PoolTimedOut)).for_each(3);
        assert_eq!(copies.len(), 3);
        for copy in copies {
            let Failure::Retry(err) = copy else {
                panic!("a retry stays a retry")
            };
            assert!(
                is_outage(&err),
                "a batch's outage is each message's: {err:#}"
            );
        }

        for not_outage in [
            anyhow::Error::from(ClientError::Conflict("at version 3".into())),
            anyhow::Error::from(ClientError::Other("Internal".into())),
            anyhow!("order 42 has no events in the event store"),
            anyhow::Error::from(sqlx::Error::RowNotFound),
        ] {
            assert!(!is_outage(&not_outage), "{not_outage:#}");
        }
    }
}
