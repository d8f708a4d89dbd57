//! Per-sandbox pacing kept in memory: restart backoff of exited containers and retry backoff
//! of failed sandboxes. Uses tokio's clock, so paused-time tests drive it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use converge_watch::EntityId;
use tokio::time::Instant;

use super::config::Backoff;

/// What to do about an exited container whose policy wants it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Its backoff has passed: restart it now.
    Now,
    /// Look again after this long.
    After(Duration),
}

#[derive(Debug, Default)]
struct ContainerTimer {
    /// Restarts in a row without a long enough run in between.
    consecutive: u32,
    /// When the exit seen last will be restarted.
    restart_at: Option<Instant>,
    /// When its task was last started by us.
    started_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct SandboxTimers {
    failures: u32,
    containers: HashMap<String, ContainerTimer>,
}

/// Restart and failure pacing of every sandbox, by id. Forgetting a sandbox (or losing the
/// state in a controller restart) only makes the next delay start from the first step.
#[derive(Debug)]
pub struct Timers {
    restart: Backoff,
    reset_after: Duration,
    failure: Backoff,
    inner: Mutex<HashMap<EntityId, SandboxTimers>>,
}

impl Timers {
    /// Timers with the given restart backoff (reset after a run of `reset_after`) and
    /// failure backoff.
    pub fn new(restart: Backoff, reset_after: Duration, failure: Backoff) -> Self {
        Self {
            restart,
            reset_after,
            failure,
            inner: Mutex::default(),
        }
    }

    fn with<T>(&self, id: &EntityId, f: impl FnOnce(&mut SandboxTimers) -> T) -> T {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(map.entry(id.clone()).or_default())
    }

    /// An exit of `container` was seen: the first sighting schedules its restart one backoff
    /// step ahead (the step grows with each restart in a row); later sightings report the
    /// time left.
    pub fn exit_seen(&self, id: &EntityId, container: &str) -> RestartDecision {
        let now = Instant::now();
        let (restart, reset_after) = (self.restart, self.reset_after);
        self.with(id, |s| {
            let t = s.containers.entry(container.to_string()).or_default();
            let at = *t.restart_at.get_or_insert_with(|| {
                if t.started_at
                    .is_some_and(|s| now.duration_since(s) >= reset_after)
                {
                    t.consecutive = 0;
                }
                now + restart.delay(t.consecutive.saturating_add(1))
            });
            if at <= now {
                RestartDecision::Now
            } else {
                RestartDecision::After(at - now)
            }
        })
    }

    /// `container` was (re)started by the restart policy.
    pub fn restarted(&self, id: &EntityId, container: &str) {
        let now = Instant::now();
        self.with(id, |s| {
            let t = s.containers.entry(container.to_string()).or_default();
            t.consecutive = t.consecutive.saturating_add(1);
            t.restart_at = None;
            t.started_at = Some(now);
        });
    }

    /// `container` was started for the first time (or after a recreate).
    pub fn started(&self, id: &EntityId, container: &str) {
        let now = Instant::now();
        self.with(id, |s| {
            s.containers.insert(
                container.to_string(),
                ContainerTimer {
                    started_at: Some(now),
                    ..ContainerTimer::default()
                },
            );
        });
    }

    /// Forgets `container`'s restart history (it was recreated or removed).
    pub fn forget_container(&self, id: &EntityId, container: &str) {
        self.with(id, |s| {
            s.containers.remove(container);
        });
    }

    /// The sandbox failed once more; returns how long to wait before retrying it.
    pub fn failed(&self, id: &EntityId) -> Duration {
        let failure = self.failure;
        self.with(id, |s| {
            s.failures = s.failures.saturating_add(1);
            failure.delay(s.failures)
        })
    }

    /// The sandbox converged without failure: its next failure waits the first step again.
    pub fn succeeded(&self, id: &EntityId) {
        self.with(id, |s| s.failures = 0);
    }

    /// Forgets everything about the sandbox (it was deleted or is not ours).
    pub fn forget(&self, id: &EntityId) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers() -> Timers {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
        };
        Timers::new(b, Duration::from_secs(60), b)
    }

    fn id() -> EntityId {
        "sandbox/web".parse().expect("id")
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_in_a_row_wait_longer_each_time() {
        let t = timers();
        t.started(&id(), "app");
        let mut waits = Vec::new();
        for _ in 0..4 {
            let RestartDecision::After(d) = t.exit_seen(&id(), "app") else {
                panic!("first sighting must wait");
            };
            waits.push(d.as_secs());
            tokio::time::advance(d).await;
            assert_eq!(t.exit_seen(&id(), "app"), RestartDecision::Now);
            t.restarted(&id(), "app");
        }
        assert_eq!(waits, [1, 2, 4, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_run_resets_the_restart_backoff() {
        let t = timers();
        t.started(&id(), "app");
        for _ in 0..3 {
            let _ = t.exit_seen(&id(), "app");
            t.restarted(&id(), "app");
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            t.exit_seen(&id(), "app"),
            RestartDecision::After(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_until_a_success_resets_them() {
        let t = timers();
        let got: Vec<u64> = (0..5).map(|_| t.failed(&id()).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 8]);
        t.succeeded(&id());
        assert_eq!(t.failed(&id()), Duration::from_secs(1));
    }
}
