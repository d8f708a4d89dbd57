//! The work queue of keys: dedup, never twice at once, two lanes with aging, delayed and
//! rate-limited re-adds.
//!
//! Every key has at most one slot. A slot is *queued* (waiting in a lane, or marked dirty
//! while being processed), *processing* (handed to a worker, not yet `done`), and/or
//! *due* (a delayed add pending). Lane entries carry a sequence number, so promoting a key
//! from the repair lane to the urgent lane is O(1): the old entry goes stale and is skipped.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::backoff::{BackoffConfig, Bucket, BucketConfig, bucket};
use super::metrics::ControllerMetrics;
use state::{Clock, LaneEntry, State};

mod state;

/// Which lane a key waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Watch events and manual triggers: served first.
    Urgent,
    /// Resyncs, retries and requeues: served after urgent work, unless a repair key has waited
    /// longer than the aging bound.
    Repair,
}

/// Outcome of one non-blocking attempt to take a key.
enum Attempt<K> {
    /// A key, or `None` when the queue is shut down and drained.
    Found(Option<K>),
    /// Nothing ready; wait for a notification or until this time.
    Wait(Option<Instant>),
}

/// Uncounts a waiter whose `get` was dropped while waiting (e.g. lost a `select!`).
struct WaitGuard<'a, K> {
    queue: &'a WorkQueue<K>,
    armed: bool,
}

impl<K> Drop for WaitGuard<'_, K> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self
                .queue
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            st.waiters = st.waiters.saturating_sub(1);
        }
    }
}

/// Tuning of a [`WorkQueue`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Aging bound (default 1 s): a repair key that has waited this long is served before
    /// any urgent key, so a steady stream of urgent work cannot starve repairs.
    pub aging: Duration,
    /// Per-key backoff of [`WorkQueue::add_rate_limited`].
    pub backoff: BackoffConfig,
    /// Global token bucket applied to retries and `requeue_after`; `None` disables it.
    pub bucket: Option<BucketConfig>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            aging: Duration::from_secs(1),
            backoff: BackoffConfig::default(),
            bucket: Some(BucketConfig::default()),
        }
    }
}

/// Why an add was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is shutting down and takes no new keys.
    #[error("the work queue is shutting down")]
    ShuttingDown,
}

/// A work queue of keys with the client-go guarantees, two lanes and built-in timers.
///
/// Guarantees: repeated adds of a waiting key collapse into one; a key handed out by
/// [`get`](Self::get) is not handed out again before [`done`](Self::done), and an add in
/// between re-queues it exactly once after `done`; FIFO within a lane; urgent before repair
/// except that a repair key older than [`QueueConfig::aging`] goes first; an urgent add of a
/// key waiting on the repair lane promotes it.
#[derive(Debug)]
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    idle: Notify,
    aging: Duration,
    backoff: BackoffConfig,
    bucket: Option<Bucket>,
    metrics: Option<ControllerMetrics>,
}

impl<K> WorkQueue<K>
where
    K: Clone + Eq + Hash + Debug + Send + 'static,
{
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Self {
        Self::with_metrics(config, None)
    }

    /// An empty queue that records `workqueue_*` metrics into `metrics`.
    pub fn with_metrics(config: QueueConfig, metrics: Option<ControllerMetrics>) -> Self {
        Self {
            state: Mutex::new(State {
                slots: HashMap::new(),
                urgent: VecDeque::new(),
                repair: VecDeque::new(),
                timers: BinaryHeap::new(),
                gated: BinaryHeap::new(),
                gate_closed_until: None,
                failures: HashMap::new(),
                seq: 0,
                depth: 0,
                processing: 0,
                waiters: 0,
                shutting_down: false,
            }),
            ready: Notify::new(),
            idle: Notify::new(),
            aging: config.aging,
            backoff: config.backoff,
            bucket: config.bucket.map(bucket),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // The critical sections never panic, so a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `key` on the urgent lane. Fails only when shutting down (and then changes nothing).
    pub fn add(&self, key: K) -> Result<(), QueueError> {
        self.add_to(key, Lane::Urgent)
    }

    /// Adds `key` on the repair lane. Fails only when shutting down.
    pub fn add_repair(&self, key: K) -> Result<(), QueueError> {
        self.add_to(key, Lane::Repair)
    }

    /// Adds `key` on `lane`: collapses with a waiting add, promotes a repair-lane key on an
    /// urgent add, marks a processing key dirty. Fails only when shutting down.
    pub fn add_to(&self, key: K, lane: Lane) -> Result<(), QueueError> {
        let mut st = self.lock();
        if st.shutting_down {
            return Err(QueueError::ShuttingDown);
        }
        if self.enqueue(&mut st, key, lane, &Clock::default()) && st.waiters > 0 {
            drop(st);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Adds many keys on `lane` under one lock. Fails only when shutting down.
    pub fn add_all(&self, keys: impl IntoIterator<Item = K>, lane: Lane) -> Result<(), QueueError> {
        let mut st = self.lock();
        if st.shutting_down {
            return Err(QueueError::ShuttingDown);
        }
        let clock = Clock::default();
        let mut woken = 0usize;
        for key in keys {
            if self.enqueue(&mut st, key, lane, &clock) {
                woken += 1;
            }
        }
        let wake = woken.min(st.waiters);
        drop(st);
        for _ in 0..wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits for the next key and marks it processing; the caller must call
    /// [`done`](Self::done) with it. Returns `None` once the queue is shutting down and no
    /// key waits in a lane.
    pub async fn get(&self) -> Option<K> {
        let mut waited = false;
        loop {
            let wake_at = match self.try_get(waited) {
                Attempt::Found(found) => return found,
                Attempt::Wait(at) => at,
            };
            // A miss counted this worker as a waiter under the lock, so every later add
            // notifies; an add before this registers leaves a permit that this wait consumes,
            // and a taker that leaves keys behind passes the wake-up on (see `try_get`). Adds
            // while nobody waits skip notifying altogether.
            let mut guard = WaitGuard {
                queue: self,
                armed: true,
            };
            let notified = self.ready.notified();
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
            // The next `try_get` uncounts this waiter under the lock it takes anyway.
            guard.armed = false;
            waited = true;
        }
    }

    /// Takes a key if one is ready now, or says until when to wait (`None`: until notified).
    fn try_get(&self, was_waiting: bool) -> Attempt<K> {
        let mut st = self.lock();
        if was_waiting {
            st.waiters = st.waiters.saturating_sub(1);
        }
        let (found, pass_on) = match self.take(&mut st, &Clock::default()) {
            Some(key) => (Attempt::Found(Some(key)), st.depth > 0 && st.waiters > 0),
            None if st.shutting_down => (Attempt::Found(None), true),
            None => {
                st.waiters += 1;
                (Attempt::Wait(st.next_wake()), false)
            }
        };
        drop(st);
        if pass_on {
            // Keys remain (or the queue is closing): make sure another waiter looks.
            self.ready.notify_one();
        }
        found
    }

    /// Marks `key` finished. If it was added while processing, it goes back on its lane now.
    /// A key that is not processing is ignored.
    pub fn done(&self, key: &K) {
        self.finish(key, false);
    }

    /// [`forget`](Self::forget) and [`done`](Self::done) under one lock: what a worker calls
    /// after a success.
    pub fn done_and_forget(&self, key: &K) {
        self.finish(key, true);
    }

    fn finish(&self, key: &K, forget: bool) {
        let mut st = self.lock();
        if forget && !st.failures.is_empty() {
            st.failures.remove(key);
        }
        st.seq += 1;
        let seq = st.seq;
        let State {
            slots,
            urgent,
            repair,
            depth,
            processing,
            shutting_down,
            waiters,
            ..
        } = &mut *st;
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        if !slot.processing {
            return;
        }
        slot.processing = false;
        *processing -= 1;
        if let (Some(m), Some(started)) = (&self.metrics, slot.started.take()) {
            m.worked_for(
                Instant::now()
                    .saturating_duration_since(started)
                    .as_secs_f64(),
            );
        }
        let mut wake = false;
        if let Some(q) = &mut slot.queued {
            q.in_lane = true;
            q.seq = seq;
            let entry = LaneEntry {
                key: key.clone(),
                seq,
                since: q.since,
            };
            match q.lane {
                Lane::Urgent => urgent.push_back(entry),
                Lane::Repair => repair.push_back(entry),
            }
            *depth += 1;
            if let Some(m) = &self.metrics {
                m.set_depth(*depth);
            }
            wake = *waiters > 0;
        } else if slot.idle() {
            slots.remove(key);
        }
        let drained = *shutting_down && *processing == 0;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        if drained {
            self.idle.notify_waiters();
        }
    }

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

    /// Keys waiting in a lane (not counting processing or delayed ones).
    pub fn len(&self) -> usize {
        self.lock().depth
    }

    /// True when no key waits in a lane.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys currently handed to workers.
    pub fn processing(&self) -> usize {
        self.lock().processing
    }

    /// Sum of how long the keys now processing have been at it, when metrics are recorded (for
    /// `workqueue_unfinished_work_seconds`).
    pub fn unfinished_work(&self) -> Duration {
        let st = self.lock();
        let now = Instant::now();
        st.slots
            .values()
            .filter_map(|s| s.started)
            .map(|t| now.saturating_duration_since(t))
            .sum()
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Stops taking adds and drops pending delayed adds; keys already waiting are still handed
    /// out, then [`get`](Self::get) returns `None`.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutting_down = true;
        st.timers.clear();
        st.gated.clear();
        for slot in st.slots.values_mut() {
            slot.due = None;
        }
        let drained = st.processing == 0;
        drop(st);
        self.ready.notify_waiters();
        self.ready.notify_one();
        if drained {
            self.idle.notify_waiters();
        }
    }

    /// [`shutdown`](Self::shutdown), then waits until every key handed out is `done`.
    pub async fn shutdown_with_drain(&self) {
        self.shutdown();
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.lock().processing == 0 {
                return;
            }
            idle.await;
        }
    }
}
