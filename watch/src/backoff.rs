//! Exponential reconnect backoff with jitter, reset after a healthy period.

use std::time::Duration;

use rand::Rng;

/// How a delay is randomised within its exponential ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`: spreads clients best, but may retry almost at once.
    Full,
    /// Uniform in `[ceiling / 2, ceiling]`: spreads clients and keeps half the ceiling.
    #[default]
    Equal,
    /// Exactly the ceiling (for tests and single clients).
    None,
}

/// Parameters of a [`Backoff`].
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling; doubling stops here.
    pub max: Duration,
    /// How the delay is randomised below the ceiling.
    pub jitter: Jitter,
    /// A connection that stayed up this long resets the backoff to `base`.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    /// Base 0.8 s, doubling to at most 30 s, equal jitter, reset after 60 s of health.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(800),
            max: Duration::from_secs(30),
            jitter: Jitter::Equal,
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Successive retry delays: the ceiling starts at `base`, doubles per attempt up to `max`,
/// and each delay is drawn below it according to the jitter. Never fails and never panics,
/// whatever the configuration (a `max` below `base` caps at `max`).
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff: the next delay is at most `config.base`.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// The configuration this backoff follows.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.config.base.saturating_mul(factor).min(self.config.max)
    }

    /// The next delay to wait; each call doubles the ceiling of the following one.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let mut rng = rand::rng();
        match self.config.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(rng.random_range(0.0..=1.0)),
            Jitter::Equal => {
                let half = ceiling / 2;
                half + (ceiling - half).mul_f64(rng.random_range(0.0..=1.0))
            }
        }
    }

    /// Waits the next delay (on tokio's clock, so paused-time tests are instant).
    pub async fn wait(&mut self) {
        let delay = self.next_delay();
        tokio::time::sleep(delay).await;
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Reports that a connection stayed up for `healthy_for`; resets the backoff when that
    /// is at least `reset_after`, and returns whether it did.
    pub fn record_healthy(&mut self, healthy_for: Duration) -> bool {
        if healthy_for >= self.config.reset_after {
            self.reset();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn config(jitter: Jitter) -> BackoffConfig {
        BackoffConfig {
            jitter,
            ..BackoffConfig::default()
        }
    }

    #[test]
    fn ceiling_doubles_from_base_and_stops_at_the_cap() {
        let mut b = Backoff::new(config(Jitter::None));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(
            delays,
            [
                800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000, 30000
            ]
        );
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(
            b.next_delay(),
            Duration::from_secs(30),
            "no overflow after many attempts"
        );
    }

    #[test]
    fn equal_jitter_stays_between_half_and_full_ceiling() {
        let mut b = Backoff::new(config(Jitter::Equal));
        let mut spread = std::collections::HashSet::new();
        for _ in 0..200 {
            b.reset();
            b.next_delay();
            b.next_delay();
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            spread.insert(d.as_millis());
        }
        assert!(spread.len() > 10, "delays are actually randomised");
    }

    #[test]
    fn full_jitter_stays_below_the_ceiling() {
        let mut b = Backoff::new(config(Jitter::Full));
        for _ in 0..200 {
            let ceiling = b.ceiling();
            assert!(b.next_delay() <= ceiling);
        }
    }

    #[test]
    fn only_a_long_enough_healthy_period_resets() {
        let mut b = Backoff::new(config(Jitter::None));
        b.next_delay();
        b.next_delay();
        assert!(!b.record_healthy(Duration::from_secs(59)));
        assert_eq!(b.ceiling(), Duration::from_millis(3200));
        assert!(b.record_healthy(Duration::from_secs(60)));
        assert_eq!(b.ceiling(), Duration::from_millis(800));
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn a_cap_below_the_base_caps_every_delay() {
        let mut b = Backoff::new(BackoffConfig {
            base: Duration::from_secs(10),
            max: Duration::from_secs(1),
            jitter: Jitter::None,
            reset_after: Duration::ZERO,
        });
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_grows_on_the_paused_clock_and_shrinks_after_reset() {
        let mut b = Backoff::new(config(Jitter::Equal));
        let mut previous_ceiling = Duration::ZERO;
        for _ in 0..7 {
            let ceiling = b.ceiling();
            assert!(ceiling >= previous_ceiling);
            let start = Instant::now();
            b.wait().await;
            let waited = start.elapsed();
            assert!(
                waited >= ceiling / 2 && waited <= ceiling + Duration::from_millis(1),
                "{waited:?}"
            );
            previous_ceiling = ceiling;
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        let connected = Instant::now();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(b.record_healthy(connected.elapsed()));
        let start = Instant::now();
        b.wait().await;
        assert!(start.elapsed() <= Duration::from_millis(801));
    }
}
