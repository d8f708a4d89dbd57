//! The queue's internal state and the operations on it, run under the queue's lock.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::{Lane, WorkQueue};

/// The current time, read at most once per queue operation and only when needed: reading
/// the clock costs more than the rest of an add.
#[derive(Debug, Default)]
pub(super) struct Clock(Cell<Option<Instant>>);

impl Clock {
    pub(super) fn now(&self) -> Instant {
        match self.0.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.0.set(Some(now));
                now
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Queued {
    pub(super) lane: Lane,
    pub(super) seq: u64,
    pub(super) since: Option<Instant>,
    /// False while the key is dirty during processing (pushed to its lane on `done`).
    pub(super) in_lane: bool,
}

#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) queued: Option<Queued>,
    pub(super) processing: bool,
    /// When processing started (only kept when metrics are recorded).
    pub(super) started: Option<Instant>,
    /// Pending delayed add: due time and the sequence number of its valid timer entry.
    pub(super) due: Option<(Instant, u64)>,
}

impl Slot {
    pub(super) fn idle(&self) -> bool {
        self.queued.is_none() && !self.processing && self.due.is_none()
    }
}

#[derive(Debug)]
pub(super) struct LaneEntry<K> {
    pub(super) key: K,
    pub(super) seq: u64,
    pub(super) since: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Timer<K> {
    pub(super) due: Instant,
    pub(super) seq: u64,
    pub(super) key: K,
}

impl<K> PartialEq for Timer<K> {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due && self.seq == other.seq
    }
}
impl<K> Eq for Timer<K> {}
impl<K> PartialOrd for Timer<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Timer<K> {
    /// Reversed, so that `BinaryHeap` pops the earliest due first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[derive(Debug)]
pub(super) struct State<K> {
    pub(super) slots: HashMap<K, Slot>,
    pub(super) urgent: VecDeque<LaneEntry<K>>,
    pub(super) repair: VecDeque<LaneEntry<K>>,
    /// Delayed adds that bypass the token bucket.
    pub(super) timers: BinaryHeap<Timer<K>>,
    /// Delayed adds that pass through the token bucket when due.
    pub(super) gated: BinaryHeap<Timer<K>>,
    /// The bucket refused the head of `gated` until this time.
    pub(super) gate_closed_until: Option<Instant>,
    pub(super) failures: HashMap<K, u32>,
    pub(super) seq: u64,
    pub(super) depth: usize,
    pub(super) processing: usize,
    /// Workers that found nothing and are (about to be) waiting for a notification.
    pub(super) waiters: usize,
    pub(super) shutting_down: bool,
}

impl<K> WorkQueue<K>
where
    K: Clone + Eq + Hash + Debug + Send + 'static,
{
    /// Core of every add; returns true when a new entry became ready for a worker.
    pub(super) fn enqueue(&self, st: &mut State<K>, key: K, lane: Lane, clock: &Clock) -> bool {
        let now = (lane == Lane::Repair || self.metrics.is_some()).then(|| clock.now());
        let seq = st.next_seq();
        let State {
            slots,
            urgent,
            repair,
            depth,
            ..
        } = st;
        match slots.entry(key) {
            MapEntry::Vacant(v) => {
                let entry = LaneEntry {
                    key: v.key().clone(),
                    seq,
                    since: now,
                };
                let queued = self.join_lane(urgent, repair, depth, lane, entry);
                v.insert(Slot {
                    queued: Some(queued),
                    ..Slot::default()
                });
                true
            }
            MapEntry::Occupied(mut o) => {
                // Decide first, so that the key is cloned only when it goes into a lane.
                let slot = o.get();
                let push = match slot.queued {
                    Some(q) if q.in_lane => lane == Lane::Urgent && q.lane == Lane::Repair,
                    Some(_) => false,
                    None => !slot.processing,
                };
                let key = push.then(|| o.key().clone());
                let slot = o.get_mut();
                match (&mut slot.queued, key) {
                    (Some(q), Some(key)) => {
                        // Promotion: the repair entry goes stale, a fresh one joins urgent.
                        q.lane = Lane::Urgent;
                        q.seq = seq;
                        urgent.push_back(LaneEntry {
                            key,
                            seq,
                            since: q.since,
                        });
                        false
                    }
                    (Some(q), None) => {
                        if !q.in_lane && lane == Lane::Urgent {
                            q.lane = Lane::Urgent;
                        }
                        false
                    }
                    (None, None) => {
                        // Processing: mark dirty; `done` puts it back on its lane.
                        slot.queued = Some(Queued {
                            lane,
                            seq,
                            since: now,
                            in_lane: false,
                        });
                        if let Some(m) = &self.metrics {
                            m.add();
                        }
                        false
                    }
                    (None, Some(key)) => {
                        let entry = LaneEntry {
                            key,
                            seq,
                            since: now,
                        };
                        slot.queued = Some(self.join_lane(urgent, repair, depth, lane, entry));
                        true
                    }
                }
            }
        }
    }

    /// Puts `entry` at the back of `lane` and counts it in `depth` (and the add metrics);
    /// returns what the key's slot records for it.
    fn join_lane(
        &self,
        urgent: &mut VecDeque<LaneEntry<K>>,
        repair: &mut VecDeque<LaneEntry<K>>,
        depth: &mut usize,
        lane: Lane,
        entry: LaneEntry<K>,
    ) -> Queued {
        let queued = Queued {
            lane,
            seq: entry.seq,
            since: entry.since,
            in_lane: true,
        };
        push_to_lane(urgent, repair, lane, entry);
        *depth += 1;
        self.note_add(*depth);
        queued
    }

    fn note_add(&self, depth: usize) {
        if let Some(m) = &self.metrics {
            m.add();
            m.set_depth(depth);
        }
    }

    pub(super) fn take(&self, st: &mut State<K>, clock: &Clock) -> Option<K> {
        self.fire_timers(st, clock);
        self.pop(st, clock)
    }

    fn pop(&self, st: &mut State<K>, clock: &Clock) -> Option<K> {
        let State {
            slots,
            urgent,
            repair,
            depth,
            processing,
            ..
        } = st;
        loop {
            let aged = repair.front().is_some_and(|e| {
                e.since
                    .is_some_and(|s| clock.now().saturating_duration_since(s) >= self.aging)
            });
            let entry = if aged {
                repair.pop_front()
            } else {
                urgent.pop_front().or_else(|| repair.pop_front())
            }?;
            let Some(slot) = slots.get_mut(&entry.key) else {
                continue;
            };
            match slot.queued {
                Some(q) if q.in_lane && q.seq == entry.seq => {
                    slot.queued = None;
                    slot.processing = true;
                    slot.started = self.metrics.as_ref().map(|_| clock.now());
                    *depth -= 1;
                    *processing += 1;
                    if let Some(m) = &self.metrics {
                        m.set_depth(*depth);
                        if let Some(since) = q.since {
                            m.queued_for(
                                clock.now().saturating_duration_since(since).as_secs_f64(),
                            );
                        }
                    }
                    return Some(entry.key);
                }
                _ => continue,
            }
        }
    }

    /// Moves due delayed adds into the repair lane; returns how many became ready.
    fn fire_timers(&self, st: &mut State<K>, clock: &Clock) -> usize {
        if st.timers.is_empty() && st.gated.is_empty() {
            return 0;
        }
        let now = clock.now();
        let mut fired = 0;
        while st.timers.peek().is_some_and(|t| t.due <= now) {
            let Some(t) = st.timers.pop() else { break };
            if self.fire(st, t, clock) {
                fired += 1;
            }
        }
        if st.gate_closed_until.is_some_and(|until| until > now) {
            return fired;
        }
        st.gate_closed_until = None;
        while st.gated.peek().is_some_and(|t| t.due <= now) {
            let valid = st
                .gated
                .peek()
                .is_some_and(|t| st.slots.get(&t.key).and_then(|s| s.due) == Some((t.due, t.seq)));
            if valid
                && let Some(b) = &self.bucket
                && let Err(not_until) = b.check()
            {
                let at = Instant::from_std(not_until.earliest_possible());
                st.gate_closed_until = Some(at.max(now + Duration::from_micros(1)));
                break;
            }
            let Some(t) = st.gated.pop() else { break };
            if self.fire(st, t, clock) {
                fired += 1;
            }
        }
        fired
    }

    fn fire(&self, st: &mut State<K>, t: Timer<K>, clock: &Clock) -> bool {
        match st.slots.get_mut(&t.key) {
            Some(slot) if slot.due == Some((t.due, t.seq)) => slot.due = None,
            _ => return false,
        }
        if st.shutting_down {
            return false;
        }
        self.enqueue(st, t.key, Lane::Repair, clock)
    }

    pub(super) fn schedule(&self, st: &mut State<K>, key: K, delay: Duration, gated: bool) {
        let due = Instant::now() + delay;
        let seq = st.next_seq();
        let slot = st.slots.entry(key.clone()).or_default();
        if slot.due.is_some_and(|(d, _)| d <= due) {
            return;
        }
        slot.due = Some((due, seq));
        let timer = Timer { due, seq, key };
        if gated {
            st.gated.push(timer);
        } else {
            st.timers.push(timer);
        }
    }
}

/// Appends `entry` to the back of `lane` (one of `urgent` and `repair`).
pub(super) fn push_to_lane<K>(
    urgent: &mut VecDeque<LaneEntry<K>>,
    repair: &mut VecDeque<LaneEntry<K>>,
    lane: Lane,
    entry: LaneEntry<K>,
) {
    match lane {
        Lane::Urgent => urgent.push_back(entry),
        Lane::Repair => repair.push_back(entry),
    }
}

impl<K> State<K> {
    /// A sequence number larger than every one handed out before.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(super) fn next_wake(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|t| t.due);
        let gated = self.gated.peek().map(|t| match self.gate_closed_until {
            Some(until) => t.due.max(until),
            None => t.due,
        });
        match (timer, gated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
