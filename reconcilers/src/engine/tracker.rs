//! Remembers the revisions the controller wrote itself, so the watch events they cause do not
//! trigger another reconcile.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

/// Default number of revisions remembered.
pub const DEFAULT_TRACKED_WRITES: usize = 10_000;

#[derive(Debug)]
struct Ring {
    set: HashSet<i64>,
    order: VecDeque<i64>,
    capacity: usize,
}

/// A bounded set of store revisions written by this controller. Revisions are store-wide
/// unique, so a revision alone identifies one write. When full, the oldest is forgotten
/// (a forgotten write merely costs one extra, harmless reconcile).
#[derive(Debug)]
pub struct WriteTracker {
    ring: Mutex<Ring>,
}

impl Default for WriteTracker {
    fn default() -> Self {
        Self::new(DEFAULT_TRACKED_WRITES)
    }
}

impl WriteTracker {
    /// A tracker remembering the last `capacity` writes (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            ring: Mutex::new(Ring {
                set: HashSet::with_capacity(capacity),
                order: VecDeque::with_capacity(capacity),
                capacity,
            }),
        }
    }

    /// Remembers that this controller wrote `revision`.
    pub fn record(&self, revision: i64) {
        let mut r = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if !r.set.insert(revision) {
            return;
        }
        r.order.push_back(revision);
        if r.order.len() > r.capacity
            && let Some(old) = r.order.pop_front()
        {
            r.set.remove(&old);
        }
    }

    /// True when `revision` is one of the remembered own writes.
    pub fn is_own(&self, revision: i64) -> bool {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .contains(&revision)
    }

    /// Number of revisions remembered.
    pub fn len(&self) -> usize {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .order
            .len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_forgets_the_oldest_write_when_full() {
        let t = WriteTracker::new(3);
        for r in 1..=4 {
            t.record(r);
        }
        assert!(!t.is_own(1));
        assert!(t.is_own(2) && t.is_own(4));
        t.record(4);
        assert_eq!(t.len(), 3);
    }
}
