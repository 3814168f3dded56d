//! Admission control: at most `ORDERSVC_MAX_IN_FLIGHT` requests are handled at once; one more is
//! answered 503 with `Retry-After` at once, before its body is read, so it writes nothing.
//!
//! Refusing beats queueing here: a queued request holds its connection and memory and then waits
//! for the same saturated event store, until it times out with nothing to show for it. A refusal
//! costs microseconds and tells the client when to come back; with an `Idempotency-Key` the retry
//! is safe whatever happened before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// How often, at most, a warning says that requests are being refused.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The shared bound of requests in flight; cheap to clone.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
    refused: Arc<Refused>,
}

/// Refusals since the last warning, so that an overload is one line every few seconds in the log,
/// not one per request.
struct Refused {
    since_warning: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last warning (0: none yet).
    warned_at_ms: AtomicU64,
}

impl Admission {
    pub fn new(limit: u32) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            refused: Arc::new(Refused {
                since_warning: AtomicU64::new(0),
                started: Instant::now(),
                warned_at_ms: AtomicU64::new(0),
            }),
        }
    }

    fn note_refusal(&self) {
        let refused = &self.refused;
        refused.since_warning.fetch_add(1, Ordering::Relaxed);
        // + 1: zero means "never warned".
        let now_ms = millis(refused.started.elapsed()).saturating_add(1);
        let last = refused.warned_at_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= millis(WARN_EVERY);
        // One request wins the right to warn; the others only count.
        if due
            && refused
                .warned_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = self.limit,
                refused = refused.since_warning.swap(0, Ordering::Relaxed),
                "overloaded: refusing requests with 503 (ORDERSVC_MAX_IN_FLIGHT)"
            );
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The middleware: runs the request with a permit, or refuses it.
pub async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    // The permit lives until the handler produced its response (every body here is built in
    // memory, so the response is complete by then).
    let Ok(_permit) = Arc::clone(&admission.permits).try_acquire_owned() else {
        admission.note_refusal();
        return ApiError::Overloaded(format!(
            "overloaded: {} requests in flight already; retry later",
            admission.limit
        ))
        .into_response();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_come_back_when_requests_end() {
        let admission = Admission::new(2);
        let first = Arc::clone(&admission.permits).try_acquire_owned();
        let second = Arc::clone(&admission.permits).try_acquire_owned();
        assert!(first.is_ok() && second.is_ok(), "two requests fit");
        assert!(
            Arc::clone(&admission.permits).try_acquire_owned().is_err(),
            "a third is refused"
        );
        drop(first);
        assert!(Arc::clone(&admission.permits).try_acquire_owned().is_ok());
    }

    #[test]
    fn a_limit_of_zero_still_admits_one_request() {
        assert_eq!(Admission::new(0).limit, 1);
    }
}
