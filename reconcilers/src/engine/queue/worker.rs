//! The worker side of the queue: waiting for a key, and finishing it (re-queueing it when it was added meanwhile).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::PoisonError;

use tokio::time::Instant;

use super::WorkQueue;
use super::state::{Clock, LaneEntry, State, push_to_lane};

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

impl<K> WorkQueue<K>
where
    K: Clone + Eq + Hash + Debug + Send + 'static,
{
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
        let seq = st.next_seq();
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
            push_to_lane(urgent, repair, q.lane, entry);
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
}
