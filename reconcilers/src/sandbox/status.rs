//! Computing a sandbox's `status` from what one reconcile observed: phase, message,
//! per-container state, restart counts and the observed spec revision.

use converge_watch::Entity;
use converge_watch::spec::{ContainerStatus, DesiredState, Phase, SandboxStatus};
use serde_json::Value;

/// Key in `status` (an extension field) holding the hash of the spec the status describes,
/// so `observed_revision` moves only when the spec changes, not on every status write.
pub const OBSERVED_SPEC_KEY: &str = "observed_spec";

/// What one reconcile saw of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerObservation {
    /// Container name from the spec.
    pub name: String,
    /// `running`, `created`, `exited`, `restarting`, `stopped`, `failed`, `absent`, ...
    pub state: String,
    /// Last exit code seen, if any.
    pub exit_code: Option<i64>,
    /// Restarts this reconcile performed.
    pub restarts: u32,
    /// The container was (re)created this reconcile: its restart count starts over.
    pub recreated: bool,
    /// It exited and its restart policy keeps it down.
    pub finished: bool,
    /// Why it ended, beyond the exit code ([`OOM_KILLED`]); meaningful with `exit_code`.
    pub reason: Option<String>,
}

/// The `reason` of a container a process of which the kernel killed for memory.
pub const OOM_KILLED: &str = "OOMKilled";

impl ContainerObservation {
    /// An observation in `state` with nothing else to say.
    pub fn new(name: &str, state: &str) -> Self {
        Self {
            name: name.to_string(),
            state: state.to_string(),
            exit_code: None,
            restarts: 0,
            recreated: false,
            finished: false,
            reason: None,
        }
    }
}

/// The phase and message of a sandbox: `failed` with `failure` when there is one; `stopped`
/// when the spec asks to stop; `dead` when a container exited and its restart policy does
/// not restart it (`never`, or `on-failure` after exit 0); `running` when every container
/// runs; `pending` otherwise.
pub fn phase_of(
    desired: DesiredState,
    containers: &[ContainerObservation],
    failure: Option<&str>,
) -> (Phase, String) {
    if let Some(message) = failure {
        return (Phase::Failed, message.to_string());
    }
    if desired == DesiredState::Stopped {
        return (Phase::Stopped, "stopped as the spec asks".to_string());
    }
    if let Some(done) = containers.iter().find(|c| c.finished) {
        let code = done
            .exit_code
            .map_or_else(|| "unknown".to_string(), |c| c.to_string());
        let how = if done.reason.as_deref() == Some(OOM_KILLED) {
            "was OOM-killed (out of memory) and exited"
        } else {
            "exited"
        };
        return (
            Phase::Dead,
            format!(
                "container {} {how} with code {code} and its restart policy does not restart it",
                done.name
            ),
        );
    }
    if !containers.is_empty() && containers.iter().all(|c| c.state == "running") {
        return (Phase::Running, String::new());
    }
    let waiting: Vec<String> = containers
        .iter()
        .filter(|c| c.state != "running")
        .map(|c| match c.reason.as_deref() {
            Some(OOM_KILLED) if c.state == "restarting" => {
                format!("{} is restarting after an OOM kill (out of memory)", c.name)
            }
            _ => format!("{} is {}", c.name, c.state),
        })
        .collect();
    (Phase::Pending, waiting.join(", "))
}

/// The container state a dead sandbox reports for a container that no longer exists (the
/// orphan pass removed it): it is gone and will not come back.
pub const REMOVED: &str = "removed";

/// Where a sandbox stands with respect to `dead`, from the status last written and the
/// hash of the spec it has now (see `docs/sandbox.md`, "Dead sandboxes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadState {
    /// The status is not `dead`.
    Alive,
    /// The status is `dead` and the spec is the one it died under (or the status names no
    /// spec): it stays dead, nothing is created or started.
    StaysDead,
    /// The status is `dead` but the spec changed since: it starts afresh.
    Revived,
}

/// Whether the sandbox whose last written status is `status` stays dead under the spec
/// hashing to `spec_hash`. The spec hash in the status (written with the phase, in the
/// same write) is compared, not `observed_revision` with the entity's revision: every
/// status write moves the revision, the hash moves only with the spec. A `dead` status
/// naming no spec (written by something other than this reconciler) counts as dead under
/// the current spec. An unreadable status is [`DeadState::Alive`].
pub fn dead_state(status: &Value, spec_hash: &str) -> DeadState {
    if status.get("phase").and_then(Value::as_str) != Some("dead") {
        return DeadState::Alive;
    }
    match status.get(OBSERVED_SPEC_KEY).and_then(Value::as_str) {
        Some(hash) if hash != spec_hash => DeadState::Revived,
        _ => DeadState::StaysDead,
    }
}

/// Everything a status write needs besides the entity it is written onto.
#[derive(Debug, Clone)]
pub struct StatusInput {
    /// Phase to report.
    pub phase: Phase,
    /// Message to report.
    pub message: String,
    /// Per-container observations, in spec order.
    pub containers: Vec<ContainerObservation>,
    /// Revision of the entity the reconcile worked from.
    pub revision: i64,
    /// Hash of the spec the reconcile worked from.
    pub spec_hash: String,
    /// The sandbox's address when this reconcile knows it; `None` keeps the recorded one.
    pub ip: Option<String>,
    /// The address was released (a dead sandbox whose containers are gone): the status
    /// drops `ip`, whatever `ip` says.
    pub ip_released: bool,
}

/// The status to write onto `current` (which may be fresher than what the reconcile read):
/// restart counts add this reconcile's restarts to those already recorded (from zero for a
/// recreated container); `exit_code` and `reason` are those of the exit this reconcile saw,
/// else the recorded ones; `observed_revision` keeps its value while the spec hash is the
/// one already observed. Unknown status fields are kept, and so is `ip` unless the input
/// has one or released it. `None` when the result
/// cannot be encoded (never expected).
pub fn status_for(current: &Entity, input: &StatusInput) -> Option<Value> {
    let prev: SandboxStatus = serde_json::from_value(current.status.clone()).unwrap_or_default();
    let same_spec =
        prev.extra.get(OBSERVED_SPEC_KEY).and_then(Value::as_str) == Some(input.spec_hash.as_str());
    let observed_revision = if same_spec && prev.observed_revision > 0 {
        prev.observed_revision
    } else {
        input.revision
    };
    let containers = input
        .containers
        .iter()
        .map(|c| {
            let last = prev
                .containers
                .iter()
                .find(|p| p.name == c.name && !c.recreated);
            let before = last.map_or(0, |p| p.restart_count);
            // A fresh exit brings its own reason (or none); otherwise the last one stays.
            let (exit_code, reason) = match c.exit_code {
                Some(code) => (Some(code), c.reason.clone()),
                None => (
                    last.and_then(|p| p.exit_code),
                    last.and_then(|p| p.reason.clone()),
                ),
            };
            ContainerStatus {
                name: c.name.clone(),
                state: c.state.clone(),
                exit_code,
                restart_count: before.saturating_add(c.restarts),
                reason,
            }
        })
        .collect();
    let mut extra = prev.extra;
    extra.insert(
        OBSERVED_SPEC_KEY.to_string(),
        Value::String(input.spec_hash.clone()),
    );
    let status = SandboxStatus {
        phase: input.phase,
        ip: if input.ip_released {
            None
        } else {
            input.ip.clone().or(prev.ip)
        },
        message: input.message.clone(),
        observed_revision,
        containers,
        extra,
    };
    serde_json::to_value(status).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity(status: Value) -> Entity {
        let mut e = Entity::new("sandbox/web".parse().expect("id"), json!({}));
        e.status = status;
        e.revision = 9;
        e
    }

    fn input(containers: Vec<ContainerObservation>) -> StatusInput {
        StatusInput {
            phase: Phase::Running,
            message: String::new(),
            containers,
            revision: 7,
            spec_hash: "h1".into(),
            ip: None,
            ip_released: false,
        }
    }

    #[test]
    fn all_running_containers_make_a_running_sandbox() {
        let c = vec![ContainerObservation::new("a", "running")];
        assert_eq!(phase_of(DesiredState::Running, &c, None).0, Phase::Running);
        let c = vec![
            ContainerObservation::new("a", "running"),
            ContainerObservation::new("b", "restarting"),
        ];
        let (phase, message) = phase_of(DesiredState::Running, &c, None);
        assert_eq!(phase, Phase::Pending);
        assert_eq!(message, "b is restarting");
    }

    #[test]
    fn a_finished_container_makes_the_sandbox_dead_with_its_exit_code() {
        let mut done = ContainerObservation::new("a", "exited");
        done.exit_code = Some(3);
        done.finished = true;
        let running = ContainerObservation::new("b", "running");
        let (phase, message) = phase_of(DesiredState::Running, &[running, done], None);
        assert_eq!(phase, Phase::Dead);
        assert_eq!(
            message,
            "container a exited with code 3 and its restart policy does not restart it"
        );
        // Only a stop the spec asks for is `stopped`.
        let (phase, _) = phase_of(DesiredState::Stopped, &[], None);
        assert_eq!(phase, Phase::Stopped);
    }

    #[test]
    fn a_dead_sandbox_stays_dead_until_its_spec_changes() {
        let dead = json!({"phase": "dead", "observed_spec": "h1"});
        assert_eq!(dead_state(&dead, "h1"), DeadState::StaysDead);
        assert_eq!(dead_state(&dead, "h2"), DeadState::Revived);
        // Declared dead by someone else, naming no spec: dead under the current one.
        assert_eq!(
            dead_state(&json!({"phase": "dead"}), "h2"),
            DeadState::StaysDead
        );
        for alive in [
            json!({"phase": "stopped", "observed_spec": "h1"}),
            Value::Null,
        ] {
            assert_eq!(dead_state(&alive, "h1"), DeadState::Alive);
        }
    }

    #[test]
    fn a_removed_container_of_a_dead_sandbox_keeps_its_exit_and_a_released_ip_is_dropped() {
        let current = entity(
            json!({"phase": "dead", "observed_spec": "h1", "ip": "10.0.0.2",
            "message": "container app exited with code 3 and its restart policy does not restart it",
            "containers": [{"name": "app", "state": "exited", "exit_code": 3,
                            "reason": OOM_KILLED, "restart_count": 0}]}),
        );
        let mut gone = input(vec![ContainerObservation::new("app", REMOVED)]);
        gone.phase = Phase::Dead;
        gone.message = current.status["message"].as_str().expect("message").into();
        gone.ip_released = true;
        let status = status_for(&current, &gone).expect("status");
        assert_eq!(status["phase"], "dead");
        assert_eq!(status["containers"][0]["state"], REMOVED);
        assert_eq!(status["containers"][0]["exit_code"], 3);
        assert_eq!(status["containers"][0]["reason"], OOM_KILLED);
        assert!(status.get("ip").is_none(), "{status}");
        // Nothing new seen: the same status, so nothing is written again.
        let again = status_for(&entity(status.clone()), &gone).expect("status");
        assert_eq!(again, status);
    }

    #[test]
    fn an_oom_kill_shows_in_the_message_and_stays_in_the_status_across_a_restart() {
        let mut oom = ContainerObservation::new("app", "restarting");
        oom.exit_code = Some(137);
        oom.reason = Some(OOM_KILLED.to_string());
        let (phase, message) = phase_of(DesiredState::Running, std::slice::from_ref(&oom), None);
        assert_eq!(phase, Phase::Pending);
        assert!(message.contains("OOM kill"), "{message}");
        let status = status_for(&entity(json!({})), &input(vec![oom])).expect("status");
        assert_eq!(status["containers"][0]["reason"], OOM_KILLED);
        assert_eq!(status["containers"][0]["exit_code"], 137);
        // Restarted and running: the last exit's code and reason are kept.
        let mut running = ContainerObservation::new("app", "running");
        running.restarts = 1;
        let after = status_for(&entity(status), &input(vec![running])).expect("status");
        assert_eq!(after["containers"][0]["reason"], OOM_KILLED);
        assert_eq!(after["containers"][0]["restart_count"], 1);
        // The next exit without an OOM kill clears it.
        let mut plain = ContainerObservation::new("app", "restarting");
        plain.exit_code = Some(1);
        let cleared = status_for(&entity(after), &input(vec![plain])).expect("status");
        assert!(
            cleared["containers"][0].get("reason").is_none(),
            "{cleared}"
        );
        let mut done = ContainerObservation::new("app", "exited");
        done.exit_code = Some(137);
        done.finished = true;
        done.reason = Some(OOM_KILLED.to_string());
        let (phase, message) = phase_of(DesiredState::Running, &[done], None);
        assert_eq!(phase, Phase::Dead);
        assert!(message.contains("OOM-killed"), "{message}");
    }

    #[test]
    fn a_failure_wins_over_everything() {
        let (phase, message) = phase_of(DesiredState::Stopped, &[], Some("no image"));
        assert_eq!((phase, message.as_str()), (Phase::Failed, "no image"));
    }

    #[test]
    fn restart_counts_accumulate_and_restart_from_zero_when_recreated() {
        let current = entity(json!({"phase": "running", "observed_revision": 3,
            "observed_spec": "h1", "ip": "10.0.0.2",
            "containers": [{"name": "a", "state": "running", "restart_count": 4},
                           {"name": "b", "state": "running", "restart_count": 2}]}));
        let mut a = ContainerObservation::new("a", "running");
        a.restarts = 1;
        let mut b = ContainerObservation::new("b", "running");
        b.recreated = true;
        let status = status_for(&current, &input(vec![a, b])).expect("status");
        assert_eq!(status["containers"][0]["restart_count"], 5);
        assert_eq!(status["containers"][1]["restart_count"], 0);
        assert_eq!(status["observed_revision"], 3, "same spec: unchanged");
        assert_eq!(status["ip"], "10.0.0.2");
    }

    #[test]
    fn a_known_ip_is_written_and_an_unknown_one_keeps_the_recorded_ip() {
        let current = entity(json!({"ip": "10.0.0.2"}));
        let kept = status_for(&current, &input(vec![])).expect("status");
        assert_eq!(kept["ip"], "10.0.0.2");
        let mut with_ip = input(vec![]);
        with_ip.ip = Some("10.0.0.9".into());
        let moved = status_for(&current, &with_ip).expect("status");
        assert_eq!(moved["ip"], "10.0.0.9");
    }

    #[test]
    fn a_new_spec_moves_the_observed_revision() {
        let current = entity(json!({"observed_revision": 3, "observed_spec": "h0"}));
        let status = status_for(&current, &input(vec![])).expect("status");
        assert_eq!(status["observed_revision"], 7);
        assert_eq!(status["observed_spec"], "h1");
    }
}
