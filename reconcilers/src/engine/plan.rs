//! Dry-run support: every mutation goes through an `Executor`, which either performs it or
//! records it into a `Plan`.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// The kind of change a reconciler makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Create an object (container, snapshot, network namespace, ...).
    Create,
    /// Start a task.
    Start,
    /// Stop a task.
    Stop,
    /// Delete an object.
    Delete,
    /// Change an object in place (including entity status).
    Update,
    /// Release a resource (IP, lease, mount).
    Release,
    /// Fetch content (image pull).
    Pull,
}

impl Verb {
    /// Lowercase name, as in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Delete => "delete",
            Verb::Update => "update",
            Verb::Release => "release",
            Verb::Pull => "pull",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change, described well enough for a human to approve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    /// What kind of change.
    pub verb: Verb,
    /// What it applies to, e.g. `container/sandbox-web-app` or `sandbox/web`.
    pub target: String,
    /// Why, e.g. `spec wants 1 container, none exists`.
    pub reason: String,
    /// Bytes it frees or fetches, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl PlannedAction {
    /// An action without a byte count.
    pub fn new(verb: Verb, target: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            verb,
            target: target.into(),
            reason: reason.into(),
            bytes: None,
        }
    }

    /// The same action with a byte count.
    pub fn with_bytes(mut self, bytes: u64) -> Self {
        self.bytes = Some(bytes);
        self
    }
}

/// An ordered list of planned actions, de-duplicated per (target, verb): the first
/// recording of a pair wins, later ones are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Plan {
    actions: Vec<PlannedAction>,
}

impl Plan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `action` unless the same verb on the same target is already planned; returns
    /// whether it was added.
    pub fn push(&mut self, action: PlannedAction) -> bool {
        if self
            .actions
            .iter()
            .any(|a| a.verb == action.verb && a.target == action.target)
        {
            return false;
        }
        self.actions.push(action);
        true
    }

    /// Appends every action of `other` with the same de-duplication.
    pub fn extend(&mut self, other: Plan) {
        for a in other.actions {
            self.push(a);
        }
    }

    /// The actions in the order they were planned.
    pub fn actions(&self) -> &[PlannedAction] {
        &self.actions
    }

    /// Number of actions.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The plan as pretty JSON (a list of actions).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The plan as an aligned table with a header (`VERB TARGET BYTES REASON`), or
    /// `no changes` when empty.
    pub fn to_table(&self) -> String {
        if self.actions.is_empty() {
            return "no changes\n".to_string();
        }
        let bytes: Vec<String> = self
            .actions
            .iter()
            .map(|a| a.bytes.map(|b| b.to_string()).unwrap_or_default())
            .collect();
        let vw = self
            .actions
            .iter()
            .map(|a| a.verb.as_str().len())
            .max()
            .unwrap_or(0)
            .max(4);
        let tw = self
            .actions
            .iter()
            .map(|a| a.target.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let bw = bytes.iter().map(String::len).max().unwrap_or(0).max(5);
        let mut out = format!(
            "{:<vw$}  {:<tw$}  {:>bw$}  REASON\n",
            "VERB", "TARGET", "BYTES"
        );
        for (a, b) in self.actions.iter().zip(&bytes) {
            out.push_str(&format!(
                "{:<vw$}  {:<tw$}  {:>bw$}  {}\n",
                a.verb.as_str(),
                a.target,
                b,
                a.reason
            ));
        }
        out
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_table())
    }
}

#[derive(Debug, Default)]
struct Recorder {
    plan: Plan,
    seen: HashSet<(Verb, String)>,
}

/// Performs mutations (real mode) or records them into a [`Plan`] without running them
/// (dry-run mode). Cloning is cheap; clones share the plan.
#[derive(Debug, Clone, Default)]
pub struct Executor {
    recorder: Option<Arc<Mutex<Recorder>>>,
}

impl Executor {
    /// Runs every mutation and logs it.
    pub fn real() -> Self {
        Self { recorder: None }
    }

    /// Runs nothing; records every action.
    pub fn dry_run() -> Self {
        Self {
            recorder: Some(Arc::new(Mutex::new(Recorder::default()))),
        }
    }

    /// True in dry-run mode.
    pub fn is_dry_run(&self) -> bool {
        self.recorder.is_some()
    }

    /// Real mode: logs `action`, runs `mutation` and returns `Ok(Some(value))` or its error.
    /// Dry-run mode: records `action`, drops `mutation` unpolled and returns `Ok(None)`.
    pub async fn perform<T, E, F>(&self, action: PlannedAction, mutation: F) -> Result<Option<T>, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        match &self.recorder {
            Some(recorder) => {
                tracing::debug!(verb = %action.verb, target = %action.target, reason = %action.reason, "planned");
                let mut r = recorder.lock().unwrap_or_else(PoisonError::into_inner);
                if r.seen.insert((action.verb, action.target.clone())) {
                    r.plan.actions.push(action);
                }
                Ok(None)
            }
            None => {
                tracing::info!(verb = %action.verb, target = %action.target, reason = %action.reason, "performing");
                mutation.await.map(Some)
            }
        }
    }

    /// Records `action` without any mutation to run (dry-run), or does nothing (real mode).
    pub fn note(&self, action: PlannedAction) {
        if let Some(recorder) = &self.recorder {
            let mut r = recorder.lock().unwrap_or_else(PoisonError::into_inner);
            if r.seen.insert((action.verb, action.target.clone())) {
                r.plan.actions.push(action);
            }
        }
    }

    /// A copy of the plan recorded so far (empty in real mode).
    pub fn plan(&self) -> Plan {
        match &self.recorder {
            Some(r) => r
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .plan
                .clone(),
            None => Plan::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dry_run_records_in_order_without_running_anything() {
        let exec = Executor::dry_run();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ran.clone();
        let out: Result<Option<u8>, std::io::Error> = exec
            .perform(
                PlannedAction::new(Verb::Create, "container/a", "missing"),
                async move {
                    r.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(1)
                },
            )
            .await;
        assert!(matches!(out, Ok(None)));
        exec.note(PlannedAction::new(Verb::Start, "task/a", "not running"));
        exec.note(PlannedAction::new(Verb::Create, "container/a", "again"));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        let plan = exec.plan();
        assert_eq!(plan.len(), 2, "same verb+target is recorded once");
        assert_eq!(plan.actions()[0].reason, "missing");
        assert_eq!(plan.actions()[1].verb, Verb::Start);
    }

    #[tokio::test]
    async fn real_executor_runs_the_mutation_and_returns_its_value() {
        let out: Result<Option<u8>, std::io::Error> = Executor::real()
            .perform(PlannedAction::new(Verb::Delete, "x", "y"), async { Ok(7) })
            .await;
        assert_eq!(out.expect("ok"), Some(7));
        assert!(Executor::real().plan().is_empty());
    }

    #[test]
    fn plans_print_as_aligned_tables_and_json() {
        let mut plan = Plan::new();
        plan.push(PlannedAction::new(
            Verb::Create,
            "container/sandbox-web-app",
            "missing",
        ));
        plan.push(
            PlannedAction::new(Verb::Delete, "blob/sha256:ab", "unreferenced").with_bytes(1024),
        );
        let table = plan.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("TARGET").expect("header");
        assert_eq!(lines[1].find("container/"), Some(col));
        assert_eq!(lines[2].find("blob/"), Some(col));
        assert!(lines[2].contains("1024"));
        let json: serde_json::Value =
            serde_json::from_str(&plan.to_json().expect("json")).expect("parse");
        assert_eq!(json[1]["verb"], "delete");
        assert_eq!(json[1]["bytes"], 1024);
        assert!(json[0].get("bytes").is_none());
        assert_eq!(Plan::new().to_table(), "no changes\n");
    }
}
