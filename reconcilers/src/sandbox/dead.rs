//! Dead sandboxes: a sandbox whose container exited for good stays `dead` until its spec
//! changes; meanwhile nothing is created or started, and once its containers are gone its
//! network is released (see `docs/sandbox.md`, "Dead sandboxes").

use std::collections::HashMap;
use std::sync::Arc;

use converge_watch::Entity;
use converge_watch::spec::{Phase, SandboxSpec, SandboxStatus};

use super::reconciler::SandboxReconciler;
use super::status::{ContainerObservation, StatusInput};
use crate::containerd::{ContainerRecord, LABEL_CONTAINER_NAME};
use crate::engine::{Action, Executor, ReconcileError, StatusStore, StatusStoreError};

/// Container states after which a missing container means someone removed it (rather
/// than it never having been made).
const SEEN_LIVE: [&str; 3] = ["running", "restarting", "exited"];

impl<S: StatusStore> SandboxReconciler<S> {
    /// Keeps dead sandbox `entity` dead under `spec`: observes each container without
    /// creating, starting or restarting anything (`by_name` are its containers, by name;
    /// strays are already removed), and once containerd lists none of them any more,
    /// releases its network (published ports, veth and namespace, then the address) as
    /// `teardown` does. Volumes and logs stay until the sandbox is deleted. Writes the
    /// status (`dead`, the message it died with, `ip` dropped once released). Fails
    /// transiently when containerd or the network cannot be asked or changed.
    pub(super) async fn hold_dead(
        &self,
        entity: &Entity,
        spec: &SandboxSpec,
        mut by_name: HashMap<String, ContainerRecord>,
        spec_hash: String,
        exec: &Executor,
    ) -> Result<Action, ReconcileError> {
        let key = &entity.id;
        let mut observed: Vec<ContainerObservation> = Vec::with_capacity(spec.containers.len());
        for c in &spec.containers {
            let existing = by_name.remove(&c.name);
            let obs = self
                .observe_dead(entity, c, existing.as_ref(), exec)
                .await
                .map_err(|e| {
                    ReconcileError::transient_from(
                        format!("cannot look at container {} of a dead sandbox", c.name),
                        e,
                    )
                })?;
            observed.push(obs);
        }
        let mut ip_released = false;
        if observed.iter().all(|o| o.state == super::status::REMOVED)
            && let Some(network) = self.network.as_ref()
        {
            // Containers → network → address, as in a teardown: only once containerd
            // confirms none is left.
            self.confirm_gone(key, exec).await?;
            network
                .disconnect(&key.to_string(), exec)
                .await
                .map_err(|e| {
                    ReconcileError::transient_from("cannot release a dead sandbox's network", e)
                })?;
            ip_released = !exec.is_dry_run();
        }
        self.timers.forget(key);
        let prev: SandboxStatus = serde_json::from_value(entity.status.clone()).unwrap_or_default();
        let input = StatusInput {
            phase: Phase::Dead,
            // The message it died with stays: what is observed now cannot tell it again.
            message: prev.message,
            containers: observed,
            revision: entity.revision,
            spec_hash,
            ip: None,
            ip_released,
        };
        self.write_status(entity, exec, &input).await?;
        Ok(Action::Done)
    }

    /// `entity` (read from the cache) or, when one of its containers that its status shows
    /// as having run has no record in `owned` and the status is not `dead`, the entity
    /// re-read from the server when that one is newer. The orphan pass removes the
    /// containers of a sandbox it read as `dead` from the server; a cache that has not
    /// seen that status yet must not make the reconciler create them again. Fails
    /// transiently when the server cannot be asked.
    pub(super) async fn fresh_if_container_lost(
        &self,
        entity: Arc<Entity>,
        owned: &[ContainerRecord],
    ) -> Result<Arc<Entity>, ReconcileError> {
        let Ok(status) = serde_json::from_value::<SandboxStatus>(entity.status.clone()) else {
            return Ok(entity);
        };
        if status.phase == Phase::Dead {
            return Ok(entity);
        }
        let lost = status.containers.iter().any(|c| {
            SEEN_LIVE.contains(&c.state.as_str())
                && !owned
                    .iter()
                    .any(|r| r.labels.get(LABEL_CONTAINER_NAME) == Some(&c.name))
        });
        if !lost {
            return Ok(entity);
        }
        match self.statuses.get(&entity.id).await {
            Ok(fresh) if fresh.revision > entity.revision => {
                tracing::debug!(
                    cached = entity.revision,
                    fresh = fresh.revision,
                    "a container is gone; using the server's newer sandbox"
                );
                Ok(Arc::new(fresh))
            }
            Ok(_) => Ok(entity),
            // Deleted meanwhile: the cache will say so; nothing is created on its word now.
            Err(e @ StatusStoreError::NotFound { .. }) => Err(ReconcileError::transient_from(
                "the sandbox lost a container and is gone from the server",
                e,
            )),
            Err(e) => Err(ReconcileError::transient_from(
                "cannot re-read a sandbox that lost a container",
                e,
            )),
        }
    }
}
