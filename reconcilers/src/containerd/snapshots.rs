//! overlayfs snapshots (prepare, commit, stat, list, mounts, remove) and applying a layer diff onto mounts.

use std::collections::HashMap;

use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Kind as ProtoKind, ListSnapshotsRequest, MountsRequest,
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use futures::StreamExt;

pub use containerd_client::types::Mount;

use super::client::{ContainerdClient, SNAPSHOTTER};
use super::content::Descriptor;
use super::error::{ContainerdError, StatusContext, found, ignore_not_found};

/// The kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Read-only view.
    View,
    /// Writable, not committed (a container's rootfs, or a layer being extracted).
    Active,
    /// Committed, immutable (an unpacked layer, named by chain id).
    Committed,
    /// Anything else.
    Unknown,
}

/// What the snapshotter knows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Key (active) or name (committed).
    pub name: String,
    /// Parent's name, empty for a base layer.
    pub parent: String,
    /// Its kind.
    pub kind: SnapshotKind,
    /// Labels.
    pub labels: HashMap<String, String>,
}

impl From<containerd_client::services::v1::snapshots::Info> for SnapshotInfo {
    fn from(info: containerd_client::services::v1::snapshots::Info) -> Self {
        let kind = match ProtoKind::try_from(info.kind) {
            Ok(ProtoKind::View) => SnapshotKind::View,
            Ok(ProtoKind::Active) => SnapshotKind::Active,
            Ok(ProtoKind::Committed) => SnapshotKind::Committed,
            _ => SnapshotKind::Unknown,
        };
        SnapshotInfo {
            name: info.name,
            parent: info.parent,
            kind,
            labels: info.labels,
        }
    }
}

impl ContainerdClient {
    /// Prepares a writable snapshot `key` on top of committed `parent` (empty: none), held by
    /// `lease` when given; returns the mounts to use it. Fails with `AlreadyExists` when the
    /// key is taken (use [`Self::snapshot_mounts`] then) and `NotFound` when the parent is.
    pub async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>, ContainerdError> {
        let req = self.leased_request(
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels,
            },
            lease,
        )?;
        let resp = self
            .snapshots()
            .prepare(req)
            .await
            .op(|| format!("prepare snapshot {key} (parent {parent:?})"))?;
        Ok(resp.into_inner().mounts)
    }

    /// The mounts of active snapshot `key`.
    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>, ContainerdError> {
        let resp = self
            .snapshots()
            .mounts(self.request(MountsRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: key.to_string(),
            }))
            .await
            .op(|| format!("mounts of snapshot {key}"))?;
        Ok(resp.into_inner().mounts)
    }

    /// Commits active snapshot `key` as `name` (the active key disappears).
    pub async fn commit_snapshot(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<(), ContainerdError> {
        let req = self.leased_request(
            CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                name: name.to_string(),
                key: key.to_string(),
                labels,
            },
            lease,
        )?;
        self.snapshots()
            .commit(req)
            .await
            .op(|| format!("commit snapshot {key} as {name}"))?;
        Ok(())
    }

    /// Removes snapshot `key`; a missing one is fine. Fails with `FailedPrecondition` while
    /// it has children.
    pub async fn remove_snapshot(&self, key: &str) -> Result<(), ContainerdError> {
        ignore_not_found(
            self.snapshots()
                .remove(self.request(RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.to_string(),
                    key: key.to_string(),
                }))
                .await
                .map(|_| ())
                .op(|| format!("remove snapshot {key}")),
        )
    }

    /// Info of snapshot `key`, or `None` when there is none.
    pub async fn stat_snapshot(&self, key: &str) -> Result<Option<SnapshotInfo>, ContainerdError> {
        let resp = found(
            self.snapshots()
                .stat(self.request(StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.to_string(),
                    key: key.to_string(),
                }))
                .await
                .op(|| format!("stat snapshot {key}")),
        )?;
        Ok(resp
            .and_then(|r| r.into_inner().info)
            .map(SnapshotInfo::from))
    }

    /// Every snapshot of the namespace.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, ContainerdError> {
        let op = || "list snapshots".to_string();
        let mut stream = self
            .snapshots()
            .list(self.request(ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                filters: Vec::new(),
            }))
            .await
            .op(op)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            out.extend(batch.op(op)?.info.into_iter().map(SnapshotInfo::from));
        }
        Ok(out)
    }

    /// Applies layer `layer` (a blob in the content store) onto `mounts` with containerd's
    /// diff service; returns the descriptor of what was applied (its digest is the layer's
    /// uncompressed digest, the diff id).
    pub async fn apply_layer(
        &self,
        layer: &Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<Descriptor, ContainerdError> {
        let op = format!("apply layer {}", layer.digest);
        let resp = self
            .diff()
            .apply(self.request(ApplyRequest {
                diff: Some(layer.to_proto()),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .op(|| op.clone())?;
        resp.into_inner()
            .applied
            .map(Descriptor::from_proto)
            .ok_or_else(|| ContainerdError::bad_data(op, "diff service returned no descriptor"))
    }
}
