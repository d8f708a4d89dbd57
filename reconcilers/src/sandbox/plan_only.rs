//! A sandbox reconciler that only plans: it reads the sandbox from the cache and records
//! the containers and tasks it would create, start or stop, changing nothing. Temporary,
//! until the containerd-backed reconciler replaces it; it lets `converge up --dry-run` and
//! `converge reconcile --kind sandbox --dry-run` run end to end.

use async_trait::async_trait;
use converge_watch::cache::Cache;
use converge_watch::spec::{DesiredState, SandboxSpec};
use converge_watch::{EntityId, Kind};

use crate::engine::{Action, Context, PlannedAction, ReconcileError, Reconciler, Verb};

/// Plans `Create` of each container and `Start` of each task of a sandbox whose desired state
/// is running, or `Stop` of each task when it is stopped. Never mutates anything itself: every
/// action goes through the context's executor with a mutation that does nothing.
#[derive(Debug, Clone)]
pub struct PlanOnlySandboxReconciler {
    cache: Cache,
}

impl PlanOnlySandboxReconciler {
    /// A reconciler reading sandboxes from `cache`.
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }
}

/// The plan target naming a sandbox's container.
pub fn container_target(id: &EntityId, container: &str) -> String {
    format!("container:{id}/{container}")
}

/// The plan target naming a sandbox container's task.
pub fn task_target(id: &EntityId, container: &str) -> String {
    format!("task:{id}/{container}")
}

#[async_trait]
impl Reconciler for PlanOnlySandboxReconciler {
    type Key = EntityId;

    async fn reconcile(&self, key: &EntityId, ctx: &Context) -> Result<Action, ReconcileError> {
        if key.kind() != Kind::Sandbox {
            return Ok(Action::Done);
        }
        let Some(entity) = self.cache.get(key) else {
            tracing::debug!("sandbox gone from the cache; nothing to plan");
            return Ok(Action::Done);
        };
        let spec: SandboxSpec = serde_json::from_value(entity.spec.clone()).map_err(|e| {
            ReconcileError::terminal_from(format!("spec of {key} is not a valid sandbox spec"), e)
        })?;
        let nothing = || async { Ok::<(), ReconcileError>(()) };
        for c in &spec.containers {
            match spec.state {
                DesiredState::Running => {
                    let create = PlannedAction::new(
                        Verb::Create,
                        container_target(key, &c.name),
                        format!("desired running, image {}", c.image),
                    );
                    ctx.executor.perform(create, nothing()).await?;
                    let start = PlannedAction::new(
                        Verb::Start,
                        task_target(key, &c.name),
                        "desired running",
                    );
                    ctx.executor.perform(start, nothing()).await?;
                }
                DesiredState::Stopped => {
                    let stop = PlannedAction::new(
                        Verb::Stop,
                        task_target(key, &c.name),
                        "desired stopped",
                    );
                    ctx.executor.perform(stop, nothing()).await?;
                }
            }
        }
        Ok(Action::Done)
    }

    fn name(&self) -> &str {
        "sandbox"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_watch::{Entity, StreamEvent};
    use serde_json::json;
    use std::sync::Arc;

    fn cache_with(entities: Vec<Entity>) -> Cache {
        let cache = Cache::new();
        cache.apply(&StreamEvent::Restarted {
            entities,
            revision: 10,
        });
        cache
    }

    fn sandbox(name: &str, state: &str) -> Entity {
        let id: EntityId = format!("sandbox/{name}").parse().expect("id");
        let mut e = Entity::new(
            id,
            json!({"state": state, "containers": [
                {"name": "app", "image": "cluster.local:5000/demo:v1"},
                {"name": "side", "image": "busybox"}
            ]}),
        );
        e.revision = 3;
        e
    }

    #[tokio::test]
    async fn running_sandbox_plans_create_and_start_of_every_container() {
        let cache = cache_with(vec![sandbox("web", "running"), sandbox("db", "stopped")]);
        let exec = crate::engine::Executor::dry_run();
        let report = crate::engine::run_pass(
            Arc::new(PlanOnlySandboxReconciler::new(cache.clone())),
            cache.ids(),
            2,
            exec.clone(),
        )
        .await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let plan = exec.plan();
        let got: Vec<(Verb, &str)> = plan
            .actions()
            .iter()
            .map(|a| (a.verb, a.target.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Verb::Stop, "task:sandbox/db/app"),
                (Verb::Stop, "task:sandbox/db/side"),
                (Verb::Create, "container:sandbox/web/app"),
                (Verb::Start, "task:sandbox/web/app"),
                (Verb::Create, "container:sandbox/web/side"),
                (Verb::Start, "task:sandbox/web/side"),
            ]
        );
    }

    #[tokio::test]
    async fn an_invalid_spec_is_a_terminal_error_and_plans_nothing() {
        let mut bad = sandbox("bad", "running");
        bad.spec = json!({"containers": "nope"});
        let cache = cache_with(vec![bad]);
        let exec = crate::engine::Executor::dry_run();
        let r = PlanOnlySandboxReconciler::new(cache.clone());
        let ctx = Context {
            executor: exec.clone(),
            cancel: Default::default(),
        };
        let out = r.reconcile(&"sandbox/bad".parse().expect("id"), &ctx).await;
        assert!(matches!(out, Err(e) if e.is_terminal()));
        assert!(exec.plan().is_empty());
    }
}
