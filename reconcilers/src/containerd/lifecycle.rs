//! Containers on containerd: create (record then snapshot), get, list by label, remove — all idempotent.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest,
    ListContainersRequest,
};
use converge_watch::entity::EntityId;
use oci_spec::runtime::Spec;
use prost_types::Any;

use super::client::{ContainerdClient, SNAPSHOTTER};
use super::error::{ContainerdError, StatusContext, found, ignore_not_found};
use super::ids::{
    LABEL_CONTAINER_NAME, LABEL_ENTITY_ID, LABEL_SANDBOX_REVISION, is_valid_identifier,
};
use super::snapshots::SnapshotKind;
use crate::sandbox::fault::{FaultStep, fault_point};

/// The runtime every converge container uses.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// Type URL of a runtime spec stored on a container record.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// The labels of a converge container: owner entity id (Contract), container name, and
/// the sandbox revision it was created from.
pub fn container_labels(
    owner: &EntityId,
    container: &str,
    revision: u64,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_ENTITY_ID.to_string(), owner.to_string()),
        (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
        (LABEL_SANDBOX_REVISION.to_string(), revision.to_string()),
    ])
}

/// What to create.
#[derive(Debug, Clone)]
pub struct ContainerRequest<'a> {
    /// containerd id (see [`super::container_id`]); also the snapshot key.
    pub id: &'a str,
    /// Image record name (kept on the container so GC keeps the image's content).
    pub image: &'a str,
    /// Committed snapshot the rootfs is prepared on (the image's top chain id).
    pub parent_snapshot: &'a str,
    /// The runtime spec.
    pub spec: &'a Spec,
    /// Labels (see [`container_labels`]).
    pub labels: HashMap<String, String>,
}

/// A container record as containerd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// containerd id.
    pub id: String,
    /// Image name.
    pub image: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Snapshot key of its rootfs.
    pub snapshot_key: String,
}

impl From<Container> for ContainerRecord {
    fn from(c: Container) -> Self {
        ContainerRecord {
            id: c.id,
            image: c.image,
            labels: c.labels,
            snapshot_key: c.snapshot_key,
        }
    }
}

impl ContainerdClient {
    /// Creates container `req.id` — the record first (runtime runc v2, overlayfs, snapshot
    /// key = id, spec as JSON), then its rootfs snapshot on `req.parent_snapshot` — so GC can
    /// never take the snapshot. Idempotent: an existing record is returned as it is (compare
    /// its labels to decide on replacement) and an existing snapshot is kept — unless the
    /// record is new and the snapshot sits on another parent (a leftover of a removal cut
    /// short), which is replaced. When the
    /// snapshot cannot be prepared, a record created by this call is deleted again.
    pub async fn create_container(
        &self,
        req: &ContainerRequest<'_>,
    ) -> Result<ContainerRecord, ContainerdError> {
        let op = format!("create container {}", req.id);
        if !is_valid_identifier(req.id) {
            return Err(ContainerdError::invalid(
                op,
                "not a valid containerd identifier",
            ));
        }
        let spec_json = serde_json::to_vec(req.spec).map_err(|e| {
            ContainerdError::invalid(op.clone(), format!("spec does not serialize: {e}"))
        })?;
        let container = Container {
            id: req.id.to_string(),
            labels: req.labels.clone(),
            image: req.image.to_string(),
            runtime: Some(Runtime {
                name: RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.to_string(),
            snapshot_key: req.id.to_string(),
            ..Default::default()
        };
        let created = self
            .containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .op(|| op.clone());
        let (record, created_now) = match created {
            Ok(resp) => match resp.into_inner().container {
                Some(c) => (ContainerRecord::from(c), true),
                None => {
                    return Err(ContainerdError::bad_data(
                        op,
                        "containerd returned no container",
                    ));
                }
            },
            Err(e) if e.is_already_exists() => match self.get_container(req.id).await? {
                Some(existing) => (existing, false),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        if created_now {
            fault_point(FaultStep::RecordCreated);
        }
        let labels = HashMap::from([(
            LABEL_ENTITY_ID.to_string(),
            req.labels.get(LABEL_ENTITY_ID).cloned().unwrap_or_default(),
        )]);
        let mut prepared = self
            .prepare_snapshot(req.id, req.parent_snapshot, labels.clone(), None)
            .await;
        if created_now
            && matches!(&prepared, Err(e) if e.is_already_exists())
            && self
                .stat_snapshot(req.id)
                .await?
                .is_some_and(|s| s.parent != req.parent_snapshot)
        {
            // Left by a removal that crashed between the record and the snapshot, for
            // another image: no task can use it (the record is new), so it is replaced.
            self.remove_snapshot(req.id).await?;
            prepared = self
                .prepare_snapshot(req.id, req.parent_snapshot, labels, None)
                .await;
        }
        match prepared {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                if created_now {
                    let _ = self.delete_container_record(req.id).await;
                }
                return Err(e);
            }
        }
        tracing::debug!(container = req.id, "container created");
        Ok(record)
    }

    /// Container `id`, or `None`.
    pub async fn get_container(
        &self,
        id: &str,
    ) -> Result<Option<ContainerRecord>, ContainerdError> {
        let resp = found(
            self.containers()
                .get(self.request(GetContainerRequest { id: id.to_string() }))
                .await
                .op(|| format!("get container {id}")),
        )?;
        Ok(resp
            .and_then(|r| r.into_inner().container)
            .map(ContainerRecord::from))
    }

    /// Containers whose labels include every `(key, value)` of `labels` (all when empty).
    pub async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerRecord>, ContainerdError> {
        let filter = labels
            .iter()
            .map(|(k, v)| {
                format!(
                    "labels.\"{}\"==\"{}\"",
                    k.replace('"', "\\\""),
                    v.replace('"', "\\\"")
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let filters = if filter.is_empty() {
            Vec::new()
        } else {
            vec![filter]
        };
        let resp = self
            .containers()
            .list(self.request(ListContainersRequest { filters }))
            .await
            .op(|| "list containers".to_string())?;
        Ok(resp
            .into_inner()
            .containers
            .into_iter()
            .map(ContainerRecord::from)
            .collect())
    }

    async fn delete_container_record(&self, id: &str) -> Result<(), ContainerdError> {
        ignore_not_found(
            self.containers()
                .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
                .await
                .map(|_| ())
                .op(|| format!("delete container {id}")),
        )
    }

    /// Keys of the active (rootfs) snapshots labelled as owned by `owner` (an entity id)
    /// that no container record uses: what a crash between deleting a container record
    /// and its snapshot leaves behind. Fails when containerd cannot list them.
    pub async fn owned_rootfs_snapshots(
        &self,
        owner: &str,
    ) -> Result<Vec<String>, ContainerdError> {
        let used: Vec<String> = self
            .list_containers(&[(LABEL_ENTITY_ID, owner)])
            .await?
            .into_iter()
            .map(|c| c.snapshot_key)
            .collect();
        Ok(self
            .list_snapshots()
            .await?
            .into_iter()
            .filter(|s| s.kind == SnapshotKind::Active)
            .filter(|s| s.labels.get(LABEL_ENTITY_ID).map(String::as_str) == Some(owner))
            .filter(|s| !used.contains(&s.name))
            .map(|s| s.name)
            .collect())
    }

    /// Removes container `id` entirely: stops its task (SIGTERM, `grace`, SIGKILL), deletes
    /// the task, the container record and its snapshot. Each missing piece counts as done,
    /// so this is safe to repeat after a crash part-way.
    pub async fn remove_container(&self, id: &str, grace: Duration) -> Result<(), ContainerdError> {
        self.stop_task(id, grace).await?;
        fault_point(FaultStep::TaskKilled);
        self.delete_task(id).await?;
        self.delete_container_record(id).await?;
        fault_point(FaultStep::RecordDeleted);
        self.remove_snapshot(id).await?;
        tracing::debug!(container = id, "container removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_watch::entity::Kind;

    #[test]
    fn labels_carry_the_owner_contract_label() {
        let owner = EntityId::new(Kind::Sandbox, "web").expect("id");
        let labels = container_labels(&owner, "app", 7);
        assert_eq!(
            labels.get("runtime.computer/entity-id").map(String::as_str),
            Some("sandbox/web")
        );
        assert_eq!(
            labels.get(LABEL_SANDBOX_REVISION).map(String::as_str),
            Some("7")
        );
    }
}
