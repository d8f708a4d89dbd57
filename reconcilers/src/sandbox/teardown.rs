//! Sandbox teardown, in order: containers (SIGTERM, grace, SIGKILL; task, record, snapshot), stray snapshots, then — once containerd confirms nothing is left — network, volumes and logs.

use std::time::Duration;

use converge_watch::EntityId;

use super::error::SandboxError;
use super::fault::{FaultStep, fault_point};
use super::reconciler::{SandboxReconciler, container_target};
use super::volumes::{has_volumes, remove_volumes};
use crate::containerd::ContainerRecord;
use crate::engine::{Executor, PlannedAction, ReconcileError, StatusStore, Verb};

impl<S: StatusStore> SandboxReconciler<S> {
    /// Removes every container in `owned`, then the network; with `logs` (sandbox
    /// deleted), also its volumes (once its containers are confirmed gone) and log directory.
    pub(super) async fn teardown(
        &self,
        key: &EntityId,
        owned: Vec<ContainerRecord>,
        exec: &Executor,
        reason: &str,
        logs: bool,
    ) -> Result<(), ReconcileError> {
        let kept: Vec<String> = owned.iter().map(|r| r.snapshot_key.clone()).collect();
        for record in owned {
            self.remove(&record.id, self.config.default_stop_grace, exec, reason)
                .await
                .map_err(|e| ReconcileError::transient_from("cannot tear the sandbox down", e))?;
        }
        if !exec.is_dry_run() {
            fault_point(FaultStep::ContainersDeleted);
        }
        self.remove_stray_snapshots(key, &kept, exec).await?;
        if let Some(network) = &self.network {
            self.confirm_gone(key, exec).await?;
            network
                .disconnect(&key.to_string(), exec)
                .await
                .map_err(|e| {
                    ReconcileError::transient_from("cannot remove the sandbox network", e)
                })?;
        }
        if logs && has_volumes(&self.config.volume_root, key.name()).await {
            // Volumes outlive their containers only until those are confirmed gone.
            self.confirm_gone(key, exec).await?;
            remove_volumes(&self.config.volume_root, key.name(), exec, reason)
                .await
                .map_err(|e| {
                    ReconcileError::transient_from("cannot remove the sandbox's volumes", e)
                })?;
        }
        let dir = self.log_dir(key);
        if logs && tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            let action = PlannedAction::new(
                Verb::Delete,
                format!("logs/{}", key.name()),
                reason.to_string(),
            );
            let removal = async {
                tokio::fs::remove_dir_all(&dir)
                    .await
                    .map_err(|source| SandboxError::Logs {
                        path: dir.display().to_string(),
                        source,
                    })
            };
            if let Err(e) = exec.perform(action, removal).await {
                tracing::warn!(error = %e, "cannot remove the sandbox's logs");
            }
        }
        Ok(())
    }

    /// Removes the rootfs snapshots labelled with sandbox `key` whose container record is
    /// gone (a crash between deleting a record and its snapshot leaves one). `kept` are the
    /// snapshot keys of the containers this teardown started from: in dry-run those still
    /// exist, so they are not planned twice. Fails transiently when containerd cannot list
    /// or remove them.
    async fn remove_stray_snapshots(
        &self,
        key: &EntityId,
        kept: &[String],
        exec: &Executor,
    ) -> Result<(), ReconcileError> {
        let owner = key.to_string();
        let strays = self
            .containerd
            .owned_rootfs_snapshots(&owner)
            .await
            .map_err(|e| {
                ReconcileError::transient_from("cannot list the sandbox's snapshots", e)
            })?;
        for snapshot in strays.into_iter().filter(|s| !kept.contains(s)) {
            let action = PlannedAction::new(
                Verb::Delete,
                format!("snapshot/{snapshot}"),
                "its container is gone",
            );
            exec.perform(action, self.containerd.remove_snapshot(&snapshot))
                .await
                .map_err(|e| ReconcileError::transient_from("cannot remove a stray snapshot", e))?;
        }
        Ok(())
    }

    /// Fails (transiently) unless containerd lists no container of sandbox `key` any more;
    /// in dry-run nothing was removed, so nothing is checked.
    pub(super) async fn confirm_gone(
        &self,
        key: &EntityId,
        exec: &Executor,
    ) -> Result<(), ReconcileError> {
        if exec.is_dry_run() {
            return Ok(());
        }
        let left = self.owned_containers(key).await?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(ReconcileError::transient_from(
                "cannot remove the sandbox network yet",
                SandboxError::NotGone { count: left.len() },
            ))
        }
    }

    /// Stops (SIGTERM, `grace`, SIGKILL) and deletes container `id` with its task and
    /// snapshot.
    pub(super) async fn remove(
        &self,
        id: &str,
        grace: Duration,
        exec: &Executor,
        reason: &str,
    ) -> Result<(), SandboxError> {
        let action = PlannedAction::new(Verb::Delete, container_target(id), reason.to_string());
        exec.perform(action, self.containerd.remove_container(id, grace))
            .await
            .map_err(|e| SandboxError::containerd(id, e))?;
        Ok(())
    }
}
