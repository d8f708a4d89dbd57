//! The orphan reconciler: removes converge-labelled containers whose sandbox is gone, meant for another node or dead, and leaked container snapshots, after a grace counted from first sight.

mod collector;
mod network;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};

use crate::containerd::{ContainerdClient, ContainerdError, ContainerdEvent};
use crate::engine::{Executor, Trigger};
use crate::gc_reconciler::{GcCollector, GcReconciler};
use crate::gc_report::{EntitySource, GcKind, GcPassReport};

pub use collector::OrphanCollector;
pub use network::OrphanNetworkConfig;

/// Default time an orphan must stay an orphan before it is removed.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(180);
/// Default SIGTERM-to-SIGKILL grace when stopping an orphan's task.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Tuning of the orphan collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanConfig {
    /// This node's id: a sandbox naming another node is not ours.
    pub node_id: String,
    /// How long a container (or snapshot) must have been seen orphaned before removal.
    pub orphan_grace: Duration,
    /// SIGTERM-to-SIGKILL grace when stopping an orphan's task.
    pub stop_grace: Duration,
}

impl OrphanConfig {
    /// Production defaults (grace 3 min, stop grace 10 s) for node `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }
}

/// Why an orphan pass could not run at all (per-object failures land in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    /// containerd's container list could not be read.
    #[error("listing containers")]
    ListContainers(#[source] ContainerdError),
    /// containerd's snapshot list could not be read.
    #[error("listing snapshots")]
    ListSnapshots(#[source] ContainerdError),
}

/// What a one-shot orphan pass needs.
#[derive(Clone)]
pub struct OrphanDeps {
    /// containerd, in converge's namespace.
    pub client: ContainerdClient,
    /// Where sandboxes are re-read by id (the entity server).
    pub entities: Arc<dyn EntitySource>,
    /// Node id and graces.
    pub config: OrphanConfig,
}

impl std::fmt::Debug for OrphanDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrphanDeps")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One orphan pass with fresh first-seen times (what `converge reconcile --kind orphans`
/// runs): with a non-zero grace nothing is removed, and the report's `kept` list names
/// every orphan with its reason. Fails only when containerd cannot be listed.
pub async fn orphan_pass(deps: &OrphanDeps, exec: &Executor) -> Result<GcPassReport, OrphanError> {
    OrphanCollector::new(
        deps.client.clone(),
        deps.entities.clone(),
        deps.config.clone(),
    )
    .pass(exec)
    .await
}

/// The orphan collector as an engine reconciler keyed by [`GcKind::Orphans`] (other keys
/// are ignored). Each reconcile runs one pass, records metrics and the last pass, and
/// fails (to be retried with backoff) only when the pass could not run.
pub type OrphanReconciler = GcReconciler<OrphanCollector>;

#[async_trait]
impl GcCollector for OrphanCollector {
    const KIND: GcKind = GcKind::Orphans;
    type Error = OrphanError;

    async fn pass(&self, exec: &Executor) -> Result<GcPassReport, OrphanError> {
        OrphanCollector::pass(self, exec).await
    }
}

/// The orphan key for a containerd event that can create orphans or leaks (a container
/// deleted, a task exited, or events possibly missed), `None` for others.
pub fn orphan_key_for_event(event: &ContainerdEvent) -> Option<GcKind> {
    match event {
        ContainerdEvent::ContainerDelete { .. }
        | ContainerdEvent::TaskExit { .. }
        | ContainerdEvent::Resubscribed => Some(GcKind::Orphans),
        ContainerdEvent::TaskStart { .. } | ContainerdEvent::TaskOom { .. } => None,
    }
}

/// Feeds `events` (e.g. [`ContainerdClient::subscribe`]) into `trigger` through
/// [`orphan_key_for_event`] until the stream ends or the controller shuts down.
pub async fn forward_containerd_events<S>(events: S, trigger: Trigger<GcKind>)
where
    S: Stream<Item = ContainerdEvent> + Send,
{
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Some(key) = orphan_key_for_event(&event)
            && trigger.trigger(key).is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_exits_and_resubscriptions_trigger_an_orphan_pass_and_starts_do_not() {
        let exit = ContainerdEvent::TaskExit {
            container_id: "c".into(),
            process_id: "c".into(),
            pid: 1,
            exit_status: 0,
        };
        assert_eq!(orphan_key_for_event(&exit), Some(GcKind::Orphans));
        let delete = ContainerdEvent::ContainerDelete {
            container_id: "c".into(),
        };
        assert_eq!(orphan_key_for_event(&delete), Some(GcKind::Orphans));
        assert_eq!(
            orphan_key_for_event(&ContainerdEvent::Resubscribed),
            Some(GcKind::Orphans)
        );
        let start = ContainerdEvent::TaskStart {
            container_id: "c".into(),
            pid: 1,
        };
        assert_eq!(orphan_key_for_event(&start), None);
    }
}
