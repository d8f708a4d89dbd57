//! Sandbox-wide lifecycle events derived from status transitions (failed because ...,
//! running with its ports ready, stopped, dead), so each is recorded once per occurrence and not
//! on every reconcile of an unchanged state, even across controller restarts.

use converge_watch::Entity;
use converge_watch::spec::{DesiredState, Phase, SandboxSpec, SandboxStatus};
use serde_json::Value;

use super::reconciler::SandboxReconciler;
use super::status::StatusInput;
use crate::engine::{Executor, StatusStore};

/// The sandbox-wide events of going from status `previous` to `next` for `spec`: empty
/// when the phase (and, for failures, the message) did not change.
pub fn transition_events(previous: &Value, spec: &SandboxSpec, next: &StatusInput) -> Vec<String> {
    let prev: SandboxStatus = serde_json::from_value(previous.clone()).unwrap_or_default();
    let mut events = Vec::new();
    match next.phase {
        Phase::Failed if prev.phase != Phase::Failed || prev.message != next.message => {
            events.push(format!("failed: {}", next.message));
        }
        Phase::Running if prev.phase != Phase::Running => {
            let ports: Vec<String> = spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .map(|p| p.port.to_string())
                .collect();
            if ports.is_empty() {
                events.push("running".to_string());
            } else {
                events.push(format!("running; ports ready: {}", ports.join(", ")));
            }
        }
        Phase::Stopped if prev.phase != Phase::Stopped && spec.state == DesiredState::Stopped => {
            events.push("stopped as the spec asks".to_string());
        }
        Phase::Dead if prev.phase != Phase::Dead => {
            events.push(format!("dead: {}", next.message));
        }
        _ => {}
    }
    events
}

impl<S: StatusStore> SandboxReconciler<S> {
    /// Records the sandbox-wide lifecycle events of writing `next` over `entity`'s status
    /// (see [`transition_events`]); best effort, nothing in dry-run.
    pub(super) fn record_transitions(
        &self,
        entity: &Entity,
        spec: &SandboxSpec,
        next: &StatusInput,
        exec: &Executor,
    ) {
        for event in transition_events(&entity.status, spec, next) {
            self.event(exec, &entity.id, entity.id.name(), &event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(ports: bool) -> SandboxSpec {
        let mut c = json!({"name": "app", "image": "busybox"});
        if ports {
            c["ports"] = json!([{"port": 8080}]);
        }
        serde_json::from_value(json!({"containers": [c]})).expect("spec")
    }

    fn next(phase: Phase, message: &str) -> StatusInput {
        StatusInput {
            phase,
            message: message.to_string(),
            containers: Vec::new(),
            revision: 1,
            spec_hash: "h".into(),
            ip: None,
            ip_released: false,
        }
    }

    #[test]
    fn becoming_running_records_the_ready_ports_once() {
        let events = transition_events(
            &json!({"phase": "pending"}),
            &spec(true),
            &next(Phase::Running, ""),
        );
        assert_eq!(events, ["running; ports ready: 8080"]);
        let again = transition_events(
            &json!({"phase": "running"}),
            &spec(true),
            &next(Phase::Running, ""),
        );
        assert!(again.is_empty(), "{again:?}");
        let plain = transition_events(&Value::Null, &spec(false), &next(Phase::Running, ""));
        assert_eq!(plain, ["running"]);
    }

    #[test]
    fn a_failure_is_recorded_once_per_distinct_message() {
        let failed = next(Phase::Failed, "port 8080 never opened");
        let first = transition_events(&json!({"phase": "pending"}), &spec(true), &failed);
        assert_eq!(first, ["failed: port 8080 never opened"]);
        let same = json!({"phase": "failed", "message": "port 8080 never opened"});
        assert!(transition_events(&same, &spec(true), &failed).is_empty());
        let other = next(Phase::Failed, "no image");
        assert_eq!(
            transition_events(&same, &spec(true), &other),
            ["failed: no image"]
        );
    }

    #[test]
    fn only_a_stop_the_spec_asks_for_is_a_sandbox_event() {
        let mut stopped = spec(false);
        stopped.state = DesiredState::Stopped;
        let stop = next(Phase::Stopped, "stopped as the spec asks");
        let running = json!({"phase": "running"});
        assert_eq!(
            transition_events(&running, &stopped, &stop),
            ["stopped as the spec asks"]
        );
        // A stop the spec does not ask for is no `stopped` event.
        assert!(transition_events(&running, &spec(false), &stop).is_empty());
    }

    #[test]
    fn becoming_dead_is_recorded_once() {
        let message = "container app exited with code 3 and its restart policy does not restart it";
        let dead = next(Phase::Dead, message);
        assert_eq!(
            transition_events(&json!({"phase": "running"}), &spec(false), &dead),
            [format!("dead: {message}")]
        );
        let again = json!({"phase": "dead", "message": message});
        assert!(transition_events(&again, &spec(false), &dead).is_empty());
    }
}
