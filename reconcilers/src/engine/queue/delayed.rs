//! Delayed adds: retries after a per-key backoff and requeues after a delay, through the token bucket.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use super::{QueueError, WorkQueue};

impl<K> WorkQueue<K>
where
    K: Clone + Eq + Hash + Debug + Send + 'static,
{
    /// Schedules an add of `key` on the repair lane after its per-key backoff, through the
    /// token bucket; returns the backoff chosen. Each call counts one more failure until
    /// [`forget`](Self::forget). Fails only when shutting down.
    pub fn add_rate_limited(&self, key: K) -> Result<Duration, QueueError> {
        let mut st = self.lock();
        if st.shutting_down {
            return Err(QueueError::ShuttingDown);
        }
        let failures = st.failures.entry(key.clone()).or_insert(0);
        *failures = failures.saturating_add(1);
        let delay = self.backoff.delay(*failures);
        if let Some(m) = &self.metrics {
            m.retry();
        }
        self.schedule(&mut st, key, delay, true);
        let wake = st.waiters > 0;
        drop(st);
        if wake {
            // A waiting worker recomputes its wake-up time.
            self.ready.notify_one();
        }
        Ok(delay)
    }

    /// Schedules an add of `key` on the repair lane after `delay`, through the token bucket.
    /// If an earlier delayed add of the key is pending, the earlier one wins. Fails only when
    /// shutting down.
    pub fn requeue_after(&self, key: K, delay: Duration) -> Result<(), QueueError> {
        self.add_after(key, delay, true)
    }

    /// Like [`requeue_after`](Self::requeue_after), choosing whether the token bucket applies.
    pub fn add_after(
        &self,
        key: K,
        delay: Duration,
        through_bucket: bool,
    ) -> Result<(), QueueError> {
        let mut st = self.lock();
        if st.shutting_down {
            return Err(QueueError::ShuttingDown);
        }
        self.schedule(&mut st, key, delay, through_bucket);
        let wake = st.waiters > 0;
        drop(st);
        if wake {
            // A waiting worker recomputes its wake-up time.
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Resets the failure count of `key` (after a success or a terminal error).
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Consecutive failures recorded for `key` since the last [`forget`](Self::forget).
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }
}
