//! Dead-sandbox cleanup (issue #5): sandbox entities whose status has been `dead` for longer
//! than a horizon are deleted, by the cluster's leader only (see `docs/leader.md`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use converge_reconcilers::engine::{Executor, Plan, PlannedAction, Verb};
use converge_watch::spec::{Phase, SandboxStatus};
use converge_watch::{Entity, EntityId, Kind};
use tokio_util::sync::CancellationToken;

use crate::server::leader::{
    CLUSTER_TASK, LeaderTerm, Leadership, LocalLeadership, run_while_leader,
};
use crate::server::store::{Store, StoreError};

/// How long a sandbox stays `dead` before its entity is deleted (`--dead-sandbox-horizon`).
pub const DEFAULT_DEAD_SANDBOX_HORIZON: Duration = Duration::from_secs(3600);

/// The longest pause between two sweeps.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The shortest pause between two sweeps.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// A sandbox that has been dead for longer than the horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredSandbox {
    /// Its id.
    pub id: EntityId,
    /// The revision it was read at; the delete is conditional on it.
    pub revision: i64,
    /// When it became dead, as far as the store can tell (its `updated_at`).
    pub dead_since: DateTime<Utc>,
    /// How long it has been dead at the time of the sweep.
    pub dead_for: Duration,
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeadSandboxError {
    /// The sandboxes could not be listed; nothing was deleted.
    #[error("cannot list sandboxes")]
    List(#[source] StoreError),
    /// The leader term ended during the sweep; the remaining deletions were not attempted.
    #[error("leadership lost during the dead-sandbox sweep")]
    LeadershipLost(#[source] Option<StoreError>),
}

/// What one sweep did (or, dry-run, would do).
#[derive(Debug, Clone, Default)]
pub struct DeadSandboxReport {
    /// Every deletion, with its reason; in dry-run mode what would be deleted.
    pub plan: Plan,
    /// Sandboxes deleted (0 in dry-run mode).
    pub deleted: usize,
    /// Sandboxes left alone because they changed since they were listed, were already
    /// gone, or could not be deleted; with why.
    pub skipped: Vec<(EntityId, String)>,
}

/// How often to sweep for `horizon`: a quarter of it, between 200 ms and a minute, so a
/// sandbox is deleted at most about a minute after its horizon passed.
pub fn sweep_interval(horizon: Duration) -> Duration {
    (horizon / 4).clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL)
}

/// The sandboxes among `entities` that are `dead` and were last written more than
/// `horizon` before `now`, oldest first. A sandbox is dead only when its status phase is
/// `dead` (`failed` and `stopped` are not: they may be retried or started again). Its dead
/// time counts from `updated_at`, which every write moves forward, so a sandbox written
/// while dead only gets more time. A status that cannot be parsed counts as not dead.
pub fn expired_dead_sandboxes(
    entities: &[Entity],
    now: DateTime<Utc>,
    horizon: Duration,
) -> Vec<ExpiredSandbox> {
    let mut expired: Vec<ExpiredSandbox> = entities
        .iter()
        .filter(|e| e.kind == Kind::Sandbox)
        .filter(|e| {
            serde_json::from_value::<SandboxStatus>(e.status.clone())
                .is_ok_and(|s| s.phase == Phase::Dead)
        })
        .filter_map(|e| {
            let dead_for = (now - e.updated_at).to_std().ok()?;
            (dead_for > horizon).then(|| ExpiredSandbox {
                id: e.id.clone(),
                revision: e.revision,
                dead_since: e.updated_at,
                dead_for,
            })
        })
        .collect();
    expired.sort_by_key(|e| e.dead_since);
    expired
}

/// The reason shown in plans and logs: `dead for 2h > horizon 1h`.
pub fn expiry_reason(sandbox: &ExpiredSandbox, horizon: Duration) -> String {
    format!(
        "dead for {} > horizon {}",
        human(sandbox.dead_for),
        human(horizon)
    )
}

/// A duration as a flag would say it: under a minute in seconds with one decimal where it
/// matters (`1.5s`, `500ms` below a second), else whole hours, minutes and seconds (`2h`,
/// `1m30s`).
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    if secs < 60 {
        let tenths = d.as_millis() / 100;
        return if tenths.is_multiple_of(10) {
            format!("{secs}s")
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// One sweep at `now`: lists the sandboxes, and deletes (through `exec`) each one dead for
/// longer than `horizon`, conditional on the revision it was listed at and, when the term
/// has a fence, on the term still holding (one etcd transaction, `Store::delete_fenced`).
/// A sandbox that changed or vanished meanwhile is skipped. Stops with `LeadershipLost`
/// as soon as the term is over (before any further deletion); dry-run deletes nothing and
/// plans `delete sandbox/x: dead for 2h > horizon 1h`.
pub async fn sweep_dead_sandboxes(
    store: &dyn Store,
    term: &LeaderTerm,
    exec: &Executor,
    now: DateTime<Utc>,
    horizon: Duration,
) -> Result<DeadSandboxReport, DeadSandboxError> {
    let listing = store
        .list(Some(Kind::Sandbox))
        .await
        .map_err(DeadSandboxError::List)?;
    let mut report = DeadSandboxReport::default();
    for sandbox in expired_dead_sandboxes(&listing.entities, now, horizon) {
        if !term.is_alive() {
            return Err(DeadSandboxError::LeadershipLost(None));
        }
        let reason = expiry_reason(&sandbox, horizon);
        let action = PlannedAction::new(Verb::Delete, sandbox.id.to_string(), reason.clone());
        report.plan.push(action.clone());
        let delete = store.delete_fenced(&sandbox.id, Some(sandbox.revision), term.fence());
        match exec.perform(action, delete).await {
            Ok(Some(_)) => {
                tracing::info!(id = %sandbox.id, %reason, "deleted dead sandbox");
                report.deleted += 1;
            }
            Ok(None) => {}
            Err(e @ StoreError::FenceLost { .. }) => {
                return Err(DeadSandboxError::LeadershipLost(Some(e)));
            }
            Err(e @ (StoreError::Conflict { .. } | StoreError::NotFound(_))) => {
                tracing::debug!(id = %sandbox.id, error = %e, "dead sandbox changed since listed; kept");
                report
                    .skipped
                    .push((sandbox.id, format!("changed since listed: {e}")));
            }
            Err(e) => {
                tracing::warn!(id = %sandbox.id, error = %e, "cannot delete dead sandbox");
                report.skipped.push((sandbox.id, e.to_string()));
            }
        }
    }
    Ok(report)
}

/// Sweeps every [`sweep_interval`] of `horizon` (the first right away) while `term` holds,
/// until `until` is cancelled or the term is lost. In dry-run mode (`dry_run`) each sweep
/// uses a fresh dry-run executor and logs its plan. Failed sweeps are logged and retried
/// at the next interval; never returns an error.
pub async fn run_dead_sandbox_cleanup(
    store: Arc<dyn Store>,
    term: LeaderTerm,
    horizon: Duration,
    dry_run: bool,
    until: CancellationToken,
) {
    let mut tick = tokio::time::interval(sweep_interval(horizon));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = until.cancelled() => return,
            () = term.lost.cancelled() => return,
            _ = tick.tick() => {}
        }
        let exec = if dry_run {
            Executor::dry_run()
        } else {
            Executor::real()
        };
        match sweep_dead_sandboxes(store.as_ref(), &term, &exec, Utc::now(), horizon).await {
            Ok(report) if dry_run && !report.plan.is_empty() => {
                tracing::info!(plan = %report.plan.to_table(), "dead-sandbox cleanup (dry run)");
            }
            Ok(_) => {}
            Err(e @ DeadSandboxError::LeadershipLost(_)) => {
                tracing::warn!(error = %e, "dead-sandbox cleanup stopped");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "dead-sandbox sweep failed; retrying later"),
        }
    }
}

/// Runs the cleanup in the background for a single server that owns its store (`converge
/// up` on its redb file): the trivial election, so it always leads; stops with `stop`.
pub fn spawn_local_cleanup(
    store: Arc<dyn Store>,
    horizon: Duration,
    dry_run: bool,
    stop: CancellationToken,
) {
    let leadership: Arc<dyn Leadership> = match LocalLeadership::new(CLUSTER_TASK) {
        Ok(local) => Arc::new(local),
        Err(e) => {
            tracing::warn!(error = %e, "dead-sandbox cleanup is off");
            return;
        }
    };
    tokio::spawn(run_while_leader(leadership, stop, move |term, until| {
        run_dead_sandbox_cleanup(store.clone(), term, horizon, dry_run, until)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sandbox(name: &str, phase: &str, updated: DateTime<Utc>) -> Entity {
        let mut e = Entity::new(
            EntityId::new(Kind::Sandbox, name).expect("id"),
            json!({"containers": []}),
        );
        e.status = json!({"phase": phase});
        e.updated_at = updated;
        e.revision = 7;
        e
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    #[test]
    fn only_dead_sandboxes_past_the_horizon_expire() {
        let hour = Duration::from_secs(3600);
        let now = at(10_000);
        let entities = vec![
            sandbox("old-dead", "dead", at(10_000 - 7200)),
            sandbox("young-dead", "dead", at(10_000 - 600)),
            sandbox("old-failed", "failed", at(0)),
            sandbox("old-stopped", "stopped", at(0)),
            sandbox("running", "running", at(0)),
            sandbox("exactly-horizon", "dead", at(10_000 - 3600)),
        ];
        let expired = expired_dead_sandboxes(&entities, now, hour);
        let names: Vec<&str> = expired.iter().map(|e| e.id.name()).collect();
        assert_eq!(names, ["old-dead"]);
        assert_eq!(expired[0].dead_for, Duration::from_secs(7200));
        assert_eq!(expired[0].revision, 7);
        assert_eq!(expiry_reason(&expired[0], hour), "dead for 2h > horizon 1h");
    }

    #[test]
    fn a_sandbox_written_in_the_future_is_not_dead_yet() {
        let entities = vec![sandbox("skewed", "dead", at(100))];
        assert!(expired_dead_sandboxes(&entities, at(0), Duration::ZERO).is_empty());
    }

    #[test]
    fn an_unreadable_status_is_not_dead() {
        let mut e = sandbox("odd", "dead", at(0));
        e.status = json!({"phase": 42});
        assert!(expired_dead_sandboxes(&[e], at(100_000), Duration::ZERO).is_empty());
    }

    #[test]
    fn the_oldest_dead_sandbox_goes_first() {
        let entities = vec![sandbox("b", "dead", at(50)), sandbox("a", "dead", at(10))];
        let expired = expired_dead_sandboxes(&entities, at(1000), Duration::from_secs(1));
        let names: Vec<&str> = expired.iter().map(|e| e.id.name()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn the_sweep_interval_follows_the_horizon_within_bounds() {
        assert_eq!(
            sweep_interval(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(sweep_interval(Duration::ZERO), Duration::from_millis(200));
    }

    #[test]
    fn durations_read_like_flags() {
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_millis(500)), "500ms");
        assert_eq!(human(Duration::from_millis(1250)), "1.2s");
        assert_eq!(human(Duration::from_secs(5)), "5s");
    }
}
