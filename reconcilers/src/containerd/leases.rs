//! Leases: hold content and snapshots against containerd's garbage collector while they are built.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest, DeleteRequest, ListRequest, ListResourcesRequest, Resource,
};

use super::client::{ContainerdClient, SNAPSHOTTER};
use super::error::{ContainerdError, StatusContext, ignore_not_found};

/// Label that makes containerd expire a lease by itself (RFC 3339 time).
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// What a lease resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseResourceKind {
    /// A content blob, by digest.
    Content,
    /// An overlayfs snapshot, by key.
    Snapshot,
}

impl LeaseResourceKind {
    fn type_name(self) -> String {
        match self {
            LeaseResourceKind::Content => "content".to_string(),
            LeaseResourceKind::Snapshot => format!("snapshots/{SNAPSHOTTER}"),
        }
    }
}

impl ContainerdClient {
    /// Creates a lease with id `id` that containerd drops by itself after `expire` (so a
    /// crashed importer leaks nothing for long). Fails with `AlreadyExists` if the id is taken.
    pub async fn create_lease(
        &self,
        id: &str,
        expire: Duration,
        mut labels: HashMap<String, String>,
    ) -> Result<String, ContainerdError> {
        let expire_at = chrono::Utc::now()
            + chrono::Duration::from_std(expire).map_err(|e| {
                ContainerdError::invalid(format!("create lease {id}"), e.to_string())
            })?;
        labels.insert(
            LEASE_EXPIRE_LABEL.to_string(),
            expire_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        let resp = self
            .leases()
            .create(self.request(CreateRequest {
                id: id.to_string(),
                labels,
            }))
            .await
            .op(|| format!("create lease {id}"))?;
        Ok(resp
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_else(|| id.to_string()))
    }

    /// Adds a resource to lease `lease`. Adding one already held is not an error.
    pub async fn lease_add_resource(
        &self,
        lease: &str,
        kind: LeaseResourceKind,
        id: &str,
    ) -> Result<(), ContainerdError> {
        let result = self
            .leases()
            .add_resource(self.request(AddResourceRequest {
                id: lease.to_string(),
                resource: Some(Resource {
                    id: id.to_string(),
                    r#type: kind.type_name(),
                }),
            }))
            .await
            .op(|| format!("add {id} to lease {lease}"));
        match result {
            Err(e) if e.is_already_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Deletes lease `lease`; what it alone held becomes collectable. A missing lease is fine.
    pub async fn delete_lease(&self, lease: &str) -> Result<(), ContainerdError> {
        ignore_not_found(
            self.leases()
                .delete(self.request(DeleteRequest {
                    id: lease.to_string(),
                    sync: false,
                }))
                .await
                .map(|_| ())
                .op(|| format!("delete lease {lease}")),
        )
    }

    /// Runs containerd's garbage collector now and waits for it to finish (by deleting an
    /// empty, freshly created lease synchronously). What no image, container, lease or gc
    /// label references is gone when this returns.
    pub async fn collect_garbage(&self) -> Result<(), ContainerdError> {
        let id = format!("converge-gc-{:016x}", rand::random::<u64>());
        self.create_lease(&id, Duration::from_secs(60), HashMap::new())
            .await?;
        self.leases()
            .delete(self.request(DeleteRequest {
                id: id.clone(),
                sync: true,
            }))
            .await
            .op(|| format!("delete lease {id} (synchronous gc)"))?;
        Ok(())
    }

    /// Ids of every lease in the namespace.
    pub async fn list_leases(&self) -> Result<Vec<String>, ContainerdError> {
        let resp = self
            .leases()
            .list(self.request(ListRequest::default()))
            .await
            .op(|| "list leases".to_string())?;
        Ok(resp.into_inner().leases.into_iter().map(|l| l.id).collect())
    }

    /// `(type, id)` of each resource lease `lease` holds.
    pub async fn lease_resources(
        &self,
        lease: &str,
    ) -> Result<Vec<(String, String)>, ContainerdError> {
        let resp = self
            .leases()
            .list_resources(self.request(ListResourcesRequest {
                id: lease.to_string(),
            }))
            .await
            .op(|| format!("list resources of lease {lease}"))?;
        Ok(resp
            .into_inner()
            .resources
            .into_iter()
            .map(|r| (r.r#type, r.id))
            .collect())
    }
}
