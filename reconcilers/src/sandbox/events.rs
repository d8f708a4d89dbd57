//! Feeds containerd task events to the sandbox controller: a task exit (or OOM) enqueues the
//! owning sandbox, found through the container's `runtime.computer/entity-id` label; a
//! resubscription (events may have been lost) enqueues every cached sandbox for repair.

use converge_watch::cache::Cache;
use converge_watch::{EntityId, Kind};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::containerd::{ContainerdClient, ContainerdEvent, LABEL_ENTITY_ID};
use crate::engine::Trigger;

/// The container whose task an event concerns, when it is one the sandbox controller reacts
/// to (exits and OOM kills of init processes).
pub fn exited_container(event: &ContainerdEvent) -> Option<&str> {
    match event {
        ContainerdEvent::TaskExit {
            container_id,
            process_id,
            ..
        } if process_id.is_empty() || process_id == container_id => Some(container_id),
        ContainerdEvent::TaskOom { container_id } => Some(container_id),
        _ => None,
    }
}

/// The sandbox owning containerd container `container_id`, read from its entity-id label;
/// `None` when the container is gone, unlabelled, or not a sandbox's. Lookup failures are
/// logged and count as `None` (the next resync catches up).
pub async fn owner_of(containerd: &ContainerdClient, container_id: &str) -> Option<EntityId> {
    let record = match containerd.get_container(container_id).await {
        Ok(record) => record?,
        Err(e) => {
            tracing::debug!(container = container_id, error = %e, "cannot look the container up");
            return None;
        }
    };
    let id: EntityId = record.labels.get(LABEL_ENTITY_ID)?.parse().ok()?;
    (id.kind() == Kind::Sandbox).then_some(id)
}

/// Spawns the task forwarding containerd events of `containerd`'s namespace to `trigger`
/// until `stop` is cancelled or the controller stops taking keys. Never fails: containerd
/// outages are handled by the event stream's own resubscription.
pub fn spawn_exit_watcher(
    containerd: ContainerdClient,
    cache: Cache,
    trigger: Trigger<EntityId>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = Box::pin(containerd.subscribe());
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => break,
                event = events.next() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            if event == ContainerdEvent::Resubscribed {
                let ids = cache
                    .list_kind(Kind::Sandbox)
                    .into_iter()
                    .map(|e| e.id.clone());
                if ids.map(|id| trigger.repair(id)).any(|r| r.is_err()) {
                    break;
                }
                continue;
            }
            let Some(container) = exited_container(&event) else {
                continue;
            };
            if let Some(id) = owner_of(&containerd, container).await {
                tracing::debug!(sandbox = %id, container, "task exited; enqueueing its sandbox");
                if trigger.trigger(id).is_err() {
                    break;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_init_process_exits_and_ooms_concern_the_sandbox() {
        let exit = |process: &str| ContainerdEvent::TaskExit {
            container_id: "sandbox.web.app".into(),
            process_id: process.into(),
            pid: 1,
            exit_status: 3,
        };
        assert_eq!(
            exited_container(&exit("sandbox.web.app")),
            Some("sandbox.web.app")
        );
        assert_eq!(exited_container(&exit("exec-1")), None);
        let oom = ContainerdEvent::TaskOom {
            container_id: "c".into(),
        };
        assert_eq!(exited_container(&oom), Some("c"));
        assert_eq!(exited_container(&ContainerdEvent::Resubscribed), None);
    }
}
