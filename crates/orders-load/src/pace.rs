//! When a load's orders go out: the one loop `orderctl load` and the chaos run share. Each order is
//! its own task, so a slow answer never holds the pace back; only `concurrency` can.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How fast orders are started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    /// As fast as the concurrency limit allows.
    Max,
}

/// A rate as a user writes it: orders per second (`50`, `0.5`) or `max`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    if text.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0 => {
            Ok(Rate::PerSecond(rate))
        }
        _ => Err(format!(
            "{text:?} is not a rate: orders per second (e.g. 50, 0.5) or max"
        )),
    }
}

/// When a load stops offering orders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    After(Duration),
    Count(u64),
}

/// How fast and for how long orders are offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub rate: Rate,
    /// Orders in hand at once at most (their tasks running); [`Rate::Max`] keeps this many going.
    pub concurrency: usize,
    /// `None`: until `sending` is cancelled.
    pub stop: Option<Stop>,
}

/// What [`offer`] did.
#[derive(Debug, Default)]
pub struct Offered {
    /// Orders started.
    pub sent: u64,
    /// Order tasks that panicked, with the panic.
    pub panicked: Vec<String>,
}

/// Starts `order(n)` for n = 1, 2, … as `pace` allows, each in its own task holding one of
/// `concurrency` permits until it ends, until the pace's stop or `sending` is cancelled; then waits
/// for every task started.
///
/// At a rate, a late tick (the concurrency limit reached, a busy machine) delays the next ones
/// rather than bursting to catch up.
pub async fn offer<F, Fut>(pace: Pace, sending: &CancellationToken, mut order: F) -> Offered
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let allowed = Arc::new(Semaphore::new(
        pace.concurrency.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let deadline = match pace.stop {
        Some(Stop::After(duration)) => Some(Instant::now() + duration),
        _ => None,
    };
    let mut interval = match pace.rate {
        Rate::PerSecond(rate) => {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Some(interval)
        }
        Rate::Max => None,
    };
    let mut tasks = JoinSet::new();
    let mut offered = Offered::default();
    loop {
        if let Some(Stop::Count(count)) = pace.stop
            && offered.sent >= count
        {
            break;
        }
        if let Some(interval) = interval.as_mut() {
            tokio::select! {
                _ = interval.tick() => {}
                () = until(deadline) => break,
                () = sending.cancelled() => break,
            }
        }
        let permit = tokio::select! {
            permit = Arc::clone(&allowed).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
            () = until(deadline) => break,
            () = sending.cancelled() => break,
        };
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        offered.sent += 1;
        let task = order(offered.sent);
        tasks.spawn(async move {
            task.await;
            drop(permit);
        });
        // Keep the set small on long runs.
        while let Some(joined) = tasks.try_join_next() {
            offered.note(joined);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        offered.note(joined);
    }
    offered
}

impl Offered {
    fn note(&mut self, joined: Result<(), tokio::task::JoinError>) {
        if let Err(error) = joined {
            self.panicked.push(error.to_string());
        }
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_rate_is_a_positive_number_or_max() {
        assert_eq!(parse_rate("50"), Ok(Rate::PerSecond(50.0)));
        assert_eq!(parse_rate("0.5"), Ok(Rate::PerSecond(0.5)));
        assert_eq!(parse_rate("MAX"), Ok(Rate::Max));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("inf").is_err());
    }

    #[tokio::test]
    async fn a_count_offers_that_many_and_waits_for_each() {
        let done = Arc::new(AtomicUsize::new(0));
        let in_hand = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let pace = Pace {
            rate: Rate::Max,
            concurrency: 2,
            stop: Some(Stop::Count(5)),
        };
        let offered = offer(pace, &CancellationToken::new(), |_| {
            let (done, in_hand, most) =
                (Arc::clone(&done), Arc::clone(&in_hand), Arc::clone(&most));
            async move {
                let now = in_hand.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                in_hand.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
        assert_eq!(offered.sent, 5);
        assert_eq!(done.load(Ordering::SeqCst), 5, "every task ran to its end");
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "at most `concurrency` at once"
        );
    }

    #[tokio::test]
    async fn a_rate_with_a_count_offers_that_many() {
        let pace = Pace {
            rate: Rate::PerSecond(1000.0),
            concurrency: usize::MAX,
            stop: Some(Stop::Count(7)),
        };
        let offered = offer(pace, &CancellationToken::new(), |_| async {}).await;
        assert_eq!(offered.sent, 7);
        assert!(offered.panicked.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_order_is_reported_not_lost() {
        let pace = Pace {
            rate: Rate::Max,
            concurrency: 1,
            stop: Some(Stop::Count(2)),
        };
        let offered = offer(pace, &CancellationToken::new(), |n| async move {
            assert!(n != 2, "order {n} fails");
        })
        .await;
        assert_eq!(offered.sent, 2);
        assert_eq!(offered.panicked.len(), 1, "{:?}", offered.panicked);
    }
}
