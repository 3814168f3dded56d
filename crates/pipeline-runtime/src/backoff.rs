//! The one retry delay of the workspace: exponential from a first delay up to a cap, with jitter
//! so that clients cut off together do not come back together, and never shorter than a server's
//! `Retry-After`. Each caller names its policy as a [`Backoff`] constant:
//!
//! | caller | first | cap | jitter |
//! |---|---|---|---|
//! | a serializable transaction's retry ([`crate::db::retry`]) | 2 ms | 500 ms | full |
//! | a worker's `nak` ([`crate::consumer::Options::delay`]) | 500 ms | 30 s | none |
//! | a consumer that cannot be reached yet (the consumer loop) | 200 ms | 2 s | none |
//! | an HTTP client retrying a POST (`orderctl load`, the chaos load) | 100 or 200 ms | 3 or 5 s | up to half |

use std::time::Duration;

use rand::Rng as _;

/// How the delay of an attempt is spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the exponential delay: the broker spreads redeliveries itself.
    None,
    /// Anywhere from 1 ms up to the exponential delay ("full jitter"): colliding transactions
    /// rarely collide again.
    Full,
    /// The exponential delay plus up to half of it: never sooner than the exponential delay.
    Half,
}

/// A retry policy: the delay before retry `attempt` (1 for the first retry) is `first` doubled
/// `attempt - 1` times, at most `cap`, then spread by `jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    pub const fn new(first: Duration, cap: Duration, jitter: Jitter) -> Backoff {
        Backoff { first, cap, jitter }
    }

    /// The delay before retry `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_after(attempt, None)
    }

    /// The delay before retry `attempt`, at least the server's `retry_after`.
    pub fn delay_after(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.spread(attempt, retry_after, rand::rng().random::<f64>())
    }

    /// The delay before jitter: `first · 2^(attempt-1)`, at most `cap`.
    pub fn exponential(&self, attempt: u32) -> Duration {
        // 2^16 times any first delay in use is beyond every cap; the bound keeps the product finite.
        let doublings = attempt.saturating_sub(1).min(16);
        self.first
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.cap)
    }

    /// The delay with `random` (in `[0, 1)`) as the jitter's draw: pure, so that tests need no
    /// randomness.
    fn spread(&self, attempt: u32, retry_after: Option<Duration>, random: f64) -> Duration {
        let base = self.exponential(attempt);
        let random = random.clamp(0.0, 1.0);
        let delay = match self.jitter {
            Jitter::None => base,
            Jitter::Full => base.mul_f64(random).max(base.min(Duration::from_millis(1))),
            Jitter::Half => base + (base / 2).mul_f64(random),
        };
        retry_after.map_or(delay, |after| delay.max(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_delay_doubles_from_the_first_and_stops_at_the_cap() {
        let backoff = Backoff::new(500 * MS, Duration::from_secs(30), Jitter::None);
        let delays: Vec<Duration> = (1..=8).map(|n| backoff.delay(n)).collect();
        assert_eq!(
            delays,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000].map(|ms| ms * MS)
        );
        assert_eq!(backoff.delay(0), 500 * MS, "attempt 0 counts as the first");
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_spreads_from_a_millisecond_up_to_the_delay() {
        let backoff = Backoff::new(2 * MS, 500 * MS, Jitter::Full);
        assert_eq!(backoff.spread(1, None, 0.0), MS);
        assert_eq!(backoff.spread(1, None, 1.0), 2 * MS);
        assert_eq!(backoff.spread(30, None, 0.5), 250 * MS);
        assert_eq!(backoff.spread(30, None, 1.0), 500 * MS);
        for attempt in 1..40 {
            let delay = backoff.delay(attempt);
            assert!((MS..=500 * MS).contains(&delay), "{attempt}: {delay:?}");
        }
    }

    #[test]
    fn half_jitter_adds_up_to_half_and_never_takes_away() {
        let backoff = Backoff::new(100 * MS, Duration::from_secs(5), Jitter::Half);
        assert_eq!(backoff.spread(1, None, 0.0), 100 * MS);
        assert_eq!(backoff.spread(1, None, 1.0), 150 * MS);
        assert_eq!(backoff.spread(3, None, 0.5), 500 * MS);
        assert_eq!(backoff.spread(30, None, 1.0), 7_500 * MS);
        for attempt in 1..40 {
            let delay = backoff.delay(attempt);
            let base = backoff.exponential(attempt);
            assert!(
                delay >= base && delay <= base * 3 / 2,
                "{attempt}: {delay:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor_not_an_addition() {
        let backoff = Backoff::new(100 * MS, Duration::from_secs(5), Jitter::Half);
        let after = Some(Duration::from_secs(1));
        assert_eq!(backoff.spread(1, after, 1.0), Duration::from_secs(1));
        assert_eq!(backoff.spread(30, after, 0.0), Duration::from_secs(5));
        assert!(backoff.delay_after(1, after) >= Duration::from_secs(1));
    }
}
