//! The work queue of keys: dedup, never twice at once, two lanes with aging, delayed and
//! rate-limited re-adds.
//!
//! Every key has at most one slot. A slot is *queued* (waiting in a lane, or marked dirty
//! while being processed), *processing* (handed to a worker, not yet `done`), and/or
//! *due* (a delayed add pending). Lane entries carry a sequence number, so promoting a key
//! from the repair lane to the urgent lane is O(1): the old entry goes stale and is skipped.
//!
//! Here: the types, adds and shutdown; `worker` hands keys out and takes them back,
//! `delayed` schedules backoff retries and requeues, `state` holds the lanes and timers.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::backoff::{BackoffConfig, Bucket, BucketConfig, bucket};
use super::metrics::ControllerMetrics;
use state::{Clock, State};

mod delayed;
mod state;
mod worker;

/// Which lane a key waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Watch events and manual triggers: served first.
    Urgent,
    /// Resyncs, retries and requeues: served after urgent work, unless a repair key has waited
    /// longer than the aging bound.
    Repair,
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
