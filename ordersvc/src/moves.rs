//! Read-your-writes without polling.
//!
//! After each commit querymodelworker publishes on `READMODEL.orders` which orders of the read
//! model moved. An ordersvc instance subscribes (core NATS: each instance gets every notice) only
//! while a `GET /api/orders/{id}?min_version=N` request waits, and wakes the requests waiting on
//! the orders a notice names, which then read their row once more. An instance that nobody waits
//! on receives no notices at all: under load most reads are not `min_version` waits, and every
//! notice delivered would be a wake-up of this process and a delivery of nats-server for nothing.
//!
//! A waiting request first makes sure the subscription is in place at the server (subscribed and
//! flushed), then reads its row again, then sleeps: a notice published after that read is one
//! the server delivers to us. A notice lost (NATS down, a reconnect, a refused subscription)
//! costs a waiting request one slow re-read interval, never its answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use pipeline_runtime::stream::{READ_MODEL_SUBJECT, ReadModelChange};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use uuid::Uuid;

/// How long the subscription outlives the last waiting request, so that a client waiting on one
/// order after another does not subscribe anew for each.
pub(crate) const LINGER: Duration = Duration::from_secs(5);

/// Between two attempts to subscribe, or to confirm the subscription, while NATS cannot be reached.
const RETRY: Duration = Duration::from_millis(500);

/// The orders someone is waiting on, each with the [`Notify`] its waiters share, and whether the
/// notices are followed. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Moves {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the follower: someone waits and the notices are not followed.
    wanted: Notify,
    /// `true` while the subscription is confirmed by the server. Set to `false` only under
    /// [`Shared::state`]'s lock with no order waited on, so that a request that registered and saw
    /// `true` under that lock keeps the subscription until it leaves.
    live: watch::Sender<bool>,
    /// Requests that read their order, found it behind, and now wait.
    asleep: AtomicUsize,
}

#[derive(Default)]
struct State {
    waiting: HashMap<Uuid, Arc<Notify>>,
    /// When the last waiting request left; `None` while one waits.
    emptied_at: Option<Instant>,
}

impl Default for Moves {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                wanted: Notify::new(),
                live: watch::Sender::new(false),
                asleep: AtomicUsize::new(0),
            }),
        }
    }
}

/// Counts one request in [`Moves::asleep`] while it lives.
pub(crate) struct Asleep(Moves);

impl Drop for Asleep {
    fn drop(&mut self) {
        self.0.shared.asleep.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's interest in one order, dropped with the request; the last one out removes the
/// order, so the map holds only orders being waited on.
pub(crate) struct Watch {
    moves: Moves,
    order_id: Uuid,
    notify: Arc<Notify>,
    live: watch::Receiver<bool>,
}

impl Moves {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a state that is still consistent.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting on `order_id`, and has the notices followed from now on if they are not.
    pub(crate) fn watch(&self, order_id: Uuid) -> Watch {
        let mut state = self.lock();
        state.emptied_at = None;
        let notify = Arc::clone(state.waiting.entry(order_id).or_default());
        let live = self.shared.live.subscribe();
        if !*live.borrow() {
            // A permit is kept if the follower is not waiting for it right now.
            self.shared.wanted.notify_one();
        }
        drop(state);
        Watch {
            moves: self.clone(),
            order_id,
            notify,
            live,
        }
    }

    /// The read model moved `order_id`: wake whoever waits on it.
    pub(crate) fn moved(&self, order_id: Uuid) {
        if let Some(notify) = self.lock().waiting.get(&order_id) {
            notify.notify_waiters();
        }
    }

    /// Marks a request as waiting after a read that found its order behind, until dropped.
    pub(crate) fn asleep(&self) -> Asleep {
        self.shared.asleep.fetch_add(1, Ordering::Relaxed);
        Asleep(self.clone())
    }

    /// Requests waiting after a read that found their order behind.
    pub(crate) fn requests_asleep(&self) -> usize {
        self.shared.asleep.load(Ordering::Relaxed)
    }

    /// Whether the notices are followed: subscribed, and the subscription confirmed by the server.
    pub(crate) fn following(&self) -> bool {
        *self.shared.live.borrow()
    }

    /// Returns when some request waits on an order.
    async fn wanted(&self) {
        loop {
            if !self.lock().waiting.is_empty() {
                return;
            }
            self.shared.wanted.notified().await;
        }
    }

    /// The subscription is confirmed: requests that wait for it go on.
    fn confirmed(&self) {
        self.shared.live.send_replace(true);
    }

    /// Whether nobody has waited for `linger`; if so, the notices stop being followed (from now
    /// on a request that comes asks for them again).
    fn idle_for(&self, linger: Duration) -> bool {
        let state = self.lock();
        let idle = state.waiting.is_empty()
            && state
                .emptied_at
                .is_none_or(|emptied| emptied.elapsed() >= linger);
        if idle {
            self.shared.live.send_replace(false);
        }
        idle
    }

    /// Orders being waited on.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

impl Watch {
    /// A future that resolves at the next notice of this order. Call
    /// [`Notified::enable`] on it *before* reading the row, so that a notice arriving between the
    /// read and the wait is not missed.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Returns once the notices are followed (at once if they already are). Bound it with a
    /// timeout: while NATS cannot be reached it does not return.
    pub(crate) async fn followed(&self) {
        let mut live = self.live.clone();
        // The sender lives as long as `self.moves`.
        let _ = live.wait_for(|live| *live).await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = self.moves.lock();
        // Two holders left, the map and this watch: nobody else waits on the order. Clones are
        // only made under the lock, so the count cannot grow meanwhile.
        if Arc::strong_count(&self.notify) <= 2 {
            state.waiting.remove(&self.order_id);
            if state.waiting.is_empty() {
                state.emptied_at = Some(Instant::now());
            }
        }
    }
}

/// Follows `READMODEL.orders` on `client` while some request waits on an order, and until
/// `linger` after the last one left, waking the waiters of every order a notice names; then
/// unsubscribes until a request waits again. Runs until the client is closed. Subscribing again
/// after a reconnect is the client's job.
pub(crate) async fn follow(client: async_nats::Client, moves: Moves, linger: Duration) {
    tracing::info!(
        subject = READ_MODEL_SUBJECT,
        "following read-model notices while min_version reads wait"
    );
    // How often to check whether anyone still waits; a fraction of the linger so that the
    // subscription goes at most a quarter of it late.
    let check = (linger / 4).max(Duration::from_millis(10));
    loop {
        moves.wanted().await;
        let mut notices = match client.subscribe(READ_MODEL_SUBJECT).await {
            Ok(subscriber) => subscriber,
            Err(err) => {
                tracing::warn!(error = %err, subject = READ_MODEL_SUBJECT,
                    "cannot follow read-model notices; min_version reads fall back to re-reading");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        tracing::debug!(subject = READ_MODEL_SUBJECT, "subscribed");
        let mut confirmed = false;
        let mut checks = tokio::time::interval_at(Instant::now() + check, check);
        loop {
            tokio::select! {
                notice = notices.next() => match notice {
                    Some(message) => moved(&moves, &message.payload),
                    None => {
                        // The client is closed: nothing will be delivered again.
                        moves.idle_for(Duration::ZERO);
                        return;
                    }
                },
                // The server has the subscription once it answered a ping sent after it.
                flushed = client.flush(), if !confirmed => match flushed {
                    Ok(()) => {
                        confirmed = true;
                        moves.confirmed();
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "read-model subscription not confirmed yet");
                        tokio::time::sleep(RETRY).await;
                    }
                },
                _ = checks.tick() => if moves.idle_for(linger) {
                    break;
                },
            }
        }
        // Dropping the subscriber unsubscribes.
        drop(notices);
        tracing::debug!(subject = READ_MODEL_SUBJECT, "unsubscribed: nobody waits");
    }
}

/// Wakes the waiters of every order the notice `payload` names.
fn moved(moves: &Moves, payload: &[u8]) {
    match serde_json::from_slice::<Vec<ReadModelChange>>(payload) {
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

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;

    fn ready<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        future
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
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

    #[test]
    fn a_request_that_waits_asks_for_the_notices_and_is_told_when_they_are_followed() {
        let moves = Moves::default();
        let mut wanted = pin!(moves.wanted());
        assert!(!ready(wanted.as_mut()), "nobody waits: nothing wanted");

        let watch = moves.watch(Uuid::new_v4());
        assert!(
            ready(wanted.as_mut()),
            "a request waits: the follower wakes"
        );
        let mut followed = pin!(watch.followed());
        assert!(!ready(followed.as_mut()), "not followed yet");
        moves.confirmed();
        assert!(ready(followed.as_mut()), "followed once confirmed");
        assert!(moves.following());
    }

    #[test]
    fn the_notices_are_followed_until_nobody_has_waited_for_the_linger() {
        let moves = Moves::default();
        let linger = Duration::from_millis(50);
        let watch = moves.watch(Uuid::new_v4());
        moves.confirmed();
        assert!(
            !moves.idle_for(Duration::ZERO),
            "a request waits: the notices stay followed however long the linger"
        );
        assert!(moves.following());

        drop(watch);
        assert!(!moves.idle_for(linger), "the last one just left");
        assert!(moves.following(), "still followed within the linger");
        std::thread::sleep(linger);
        assert!(moves.idle_for(linger), "nobody for the linger: unsubscribe");
        assert!(!moves.following());

        // Expected: a request that comes after the teardown is not told the notices are
        // followed, and asks the follower for them again.
        let watch = moves.watch(Uuid::new_v4());
        let mut followed = pin!(watch.followed());
        assert!(
            !ready(followed.as_mut()),
            "must wait for a new subscription"
        );
        assert!(ready(pin!(moves.wanted())), "the follower is asked again");
    }
}
