//! Retry pacing: per-key exponential backoff with jitter, and the global token bucket.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rand::Rng;

/// Per-key exponential backoff: the n-th consecutive failure of a key waits
/// `min(cap, base * 2^(n-1)) * (1 - jitter * u)` with `u` uniform in `[0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay after the first failure (default 5 ms).
    pub base: Duration,
    /// Largest delay (default 5 min).
    pub cap: Duration,
    /// Fraction in `[0, 1]` by which a delay may be randomly shortened (default 0.2), so that
    /// keys that failed together do not retry together. Below 0.5 delays still strictly grow.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(5),
            cap: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl BackoffConfig {
    /// The delay before retry number `failures` (1 for the first failure). Never exceeds
    /// `cap`, never panics, whatever the inputs.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(63);
        let factor = 1u64 << exp;
        let nanos = u64::try_from(self.base.as_nanos()).unwrap_or(u64::MAX);
        let raw = Duration::from_nanos(nanos.saturating_mul(factor)).min(self.cap);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return raw;
        }
        let u: f64 = rand::rng().random_range(0.0..1.0);
        raw.mul_f64(1.0 - jitter * u)
    }
}

/// The global token bucket every retry and requeue passes through (like client-go's
/// `BucketRateLimiter`): at most `burst` at once, refilled at `qps` per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Sustained retries per second (default 10, as client-go).
    pub qps: NonZeroU32,
    /// Retries allowed at once (default 100, as client-go).
    pub burst: NonZeroU32,
}

impl Default for BucketConfig {
    fn default() -> Self {
        Self {
            qps: NonZeroU32::MIN.saturating_add(9),
            burst: NonZeroU32::MIN.saturating_add(99),
        }
    }
}

/// A [`governor`] clock that reads tokio's clock, so paused-time tests drive the bucket too.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;
    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// The token bucket type used by the queue.
pub(crate) type Bucket =
    RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

pub(crate) fn bucket(config: BucketConfig) -> Bucket {
    RateLimiter::direct_with_clock(
        Quota::per_second(config.qps).allow_burst(config.burst),
        TokioClock,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_until_the_cap() {
        let b = BackoffConfig {
            base: Duration::from_millis(5),
            cap: Duration::from_secs(1),
            jitter: 0.0,
        };
        assert_eq!(b.delay(1), Duration::from_millis(5));
        assert_eq!(b.delay(2), Duration::from_millis(10));
        assert_eq!(b.delay(5), Duration::from_millis(80));
        assert_eq!(b.delay(30), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jittered_backoff_still_grows_and_stays_under_the_cap() {
        let b = BackoffConfig::default();
        let mut last = Duration::ZERO;
        for n in 1..=16 {
            let d = b.delay(n);
            assert!(d > last, "delay {n} = {d:?} did not grow past {last:?}");
            last = d;
        }
        for n in 20..40 {
            assert!(b.delay(n) <= b.cap);
        }
    }
}
