//! Read-your-writes without polling.
//!
//! After each commit querymodelworker publishes on `READMODEL.orders` which orders of the read
//! model moved. Every ordersvc instance subscribes (core NATS: each instance gets every notice)
//! and wakes the `GET /api/orders/{id}?min_version=N` requests waiting on those orders, which then
//! read their row once more. A notice lost (NATS down, a reconnect, a refused subscription) costs a
//! waiting request one slow re-read interval, never its answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt as _;
use pipeline_runtime::stream::{READ_MODEL_SUBJECT, ReadModelChange};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use uuid::Uuid;

/// The orders someone is waiting on, each with the [`Notify`] its waiters share. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Moves {
    waiting: Arc<Mutex<HashMap<Uuid, Arc<Notify>>>>,
    /// Requests that read their order, found it behind, and now wait.
    asleep: Arc<AtomicUsize>,
}

/// Counts one request in [`Moves::asleep`] while it lives.
pub(crate) struct Asleep(Arc<AtomicUsize>);

impl Drop for Asleep {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's interest in one order, dropped with the request; the last one out removes the
/// order, so the map holds only orders being waited on.
pub(crate) struct Watch {
    moves: Moves,
    order_id: Uuid,
    notify: Arc<Notify>,
}

impl Moves {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Notify>>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting on `order_id`.
    pub(crate) fn watch(&self, order_id: Uuid) -> Watch {
        let notify = Arc::clone(self.lock().entry(order_id).or_default());
        Watch {
            moves: self.clone(),
            order_id,
            notify,
        }
    }

    /// The read model moved `order_id`: wake whoever waits on it.
    pub(crate) fn moved(&self, order_id: Uuid) {
        if let Some(notify) = self.lock().get(&order_id) {
            notify.notify_waiters();
        }
    }

    /// Marks a request as waiting after a read that found its order behind, until dropped.
    pub(crate) fn asleep(&self) -> Asleep {
        self.asleep.fetch_add(1, Ordering::Relaxed);
        Asleep(Arc::clone(&self.asleep))
    }

    /// Requests waiting after a read that found their order behind.
    pub(crate) fn requests_asleep(&self) -> usize {
        self.asleep.load(Ordering::Relaxed)
    }

    /// Orders being waited on.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().len()
    }
}

impl Watch {
    /// A future that resolves at the next notice of this order. Call
    /// [`Notified::enable`] on it *before* reading the row, so that a notice arriving between the
    /// read and the wait is not missed.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waiting = self.moves.lock();
        // Two holders left, the map and this watch: nobody else waits on the order. Clones are
        // only made under the lock, so the count cannot grow meanwhile.
        if Arc::strong_count(&self.notify) <= 2 {
            waiting.remove(&self.order_id);
        }
    }
}

/// Follows `READMODEL.orders` on `client` until the subscription ends (the client closed),
/// waking the waiters of every order a notice names. Subscribing again after a reconnect is the
/// client's job.
pub(crate) async fn follow(client: async_nats::Client, moves: Moves) {
    let mut notices = match client.subscribe(READ_MODEL_SUBJECT).await {
        Ok(subscriber) => subscriber,
        Err(err) => {
            tracing::warn!(error = %err, subject = READ_MODEL_SUBJECT,
                "cannot follow read-model notices; min_version reads fall back to re-reading");
            return;
        }
    };
    tracing::info!(
        subject = READ_MODEL_SUBJECT,
        "following read-model notices for min_version reads"
    );
    while let Some(message) = notices.next().await {
        match serde_json::from_slice::<Vec<ReadModelChange>>(&message.payload) {
            Ok(changes) => {
                for change in changes {
                    moves.moved(change.order_id);
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "a read-model notice that is not one; ignored")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn ready(future: std::pin::Pin<&mut Notified<'_>>) -> bool {
        matches!(
            future.poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(())
        )
    }

    #[test]
    fn a_notice_wakes_the_waiters_of_its_order_only() {
        let moves = Moves::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let watch_a = moves.watch(a);
        let watch_b = moves.watch(b);
        let mut on_a = pin!(watch_a.notified());
        let mut on_b = pin!(watch_b.notified());
        on_a.as_mut().enable();
        on_b.as_mut().enable();

        // Expected: enabled before the notice, so it counts though nobody polled yet.
        moves.moved(a);
        assert!(
            ready(on_a.as_mut()),
            "the waiter of the order that moved wakes"
        );
        assert!(
            !ready(on_b.as_mut()),
            "the waiter of another order does not"
        );
    }

    #[test]
    fn the_last_watch_dropped_forgets_the_order() {
        let moves = Moves::default();
        let order = Uuid::new_v4();
        let first = moves.watch(order);
        let second = moves.watch(order);
        assert_eq!(moves.waiting(), 1, "one entry per order, however many wait");
        drop(first);
        assert_eq!(moves.waiting(), 1, "another request still waits");
        drop(second);
        assert_eq!(moves.waiting(), 0, "nobody waits: nothing kept");
        // Expected: a notice of an order nobody waits on is a no-op.
        moves.moved(order);
        assert_eq!(moves.waiting(), 0);
    }
}
