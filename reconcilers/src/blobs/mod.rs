//! The blob reconciler: mark and sweep over the registry's artifact store while the registry keeps serving, generic over a small [`BlobStore`] trait (implemented for the store in the root package).

mod collector;
mod digest;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use converge_watch::StreamEvent;

use crate::containerd::ContainerdClient;
use crate::engine::{BoxError, Executor};
use crate::gc_reconciler::{GcCollector, GcReconciler};
use crate::gc_report::{EntitySource, GcKind, GcPassReport, is_artifact_retirement};

pub use collector::{BlobCollector, SWEEP_BATCH};
pub use digest::{BlobDigest, BlobDigestError};

/// Default age a blob must reach (by mtime) before it can be swept.
pub const DEFAULT_BLOB_GRACE: Duration = Duration::from_secs(3600);

/// One entry of the store's blob directory, as found on disk (the name is not trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    /// The raw file name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
    /// False for symlinks, directories and other non-regular files (never swept).
    pub regular_file: bool,
}

/// Why the reachability of a manifest is unknown.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// The manifest (or a child) exists but cannot be parsed or is too large.
    #[error("manifest {digest} cannot be parsed")]
    Unparsable {
        /// The root asked about.
        digest: BlobDigest,
        /// The store's complaint.
        #[source]
        source: BoxError,
    },
    /// The store could not be read.
    #[error("reading the store")]
    Io(#[source] BoxError),
}

/// What blob GC needs from an artifact store. Implementations must build no path from a
/// digest other than the validated [`BlobDigest`]'s hex, and must never follow symlinks
/// when listing.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Every entry of the blob directory (temp files of in-flight writes may be omitted).
    async fn list_blob_entries(&self) -> Result<Vec<BlobEntry>, BoxError>;
    /// The current mtime of blob `digest`, `None` when it is gone.
    async fn blob_modified(&self, digest: &BlobDigest) -> Result<Option<SystemTime>, BoxError>;
    /// Everything manifest `digest` keeps alive, itself included (index children, configs,
    /// layers); a manifest that is absent keeps only itself.
    async fn reachable_from(&self, digest: &BlobDigest)
    -> Result<BTreeSet<BlobDigest>, ReachError>;
    /// Every manifest linked into a repository (pushed by name or tagged).
    async fn linked_manifests(&self) -> Result<BTreeSet<BlobDigest>, BoxError>;
    /// Removes every repository link and tag pointing at `digest`, then the blob; returns
    /// whether the blob existed.
    async fn delete_blob(&self, digest: &BlobDigest) -> Result<bool, BoxError>;
    /// Deletes a batch: each entry whose blob still has exactly the expected mtime loses
    /// every repository link and tag pointing at it, then the blob. Returns one outcome per
    /// entry, in order; a blob modified since (or no longer a regular file) is left alone
    /// ([`BlobDeleted::Modified`]), an error on one entry leaves that blob in place. The
    /// default re-reads the mtime ([`BlobStore::blob_modified`]) and calls
    /// [`BlobStore::delete_blob`] entry by entry; stores override it to share the work of
    /// finding links across the batch.
    async fn delete_blobs(&self, batch: &[BlobDeletion]) -> Vec<Result<BlobDeleted, BoxError>> {
        let mut out = Vec::with_capacity(batch.len());
        for entry in batch {
            let outcome = match self.blob_modified(&entry.digest).await {
                Ok(Some(m)) if m != entry.modified => Ok(BlobDeleted::Modified),
                Ok(_) => self.delete_blob(&entry.digest).await.map(|existed| {
                    if existed {
                        BlobDeleted::Deleted
                    } else {
                        BlobDeleted::Gone
                    }
                }),
                Err(e) => Err(e),
            };
            out.push(outcome);
        }
        out
    }
}

/// One blob a sweep deletes, with the mtime the pass saw when it chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDeletion {
    /// The blob.
    pub digest: BlobDigest,
    /// Its mtime when it was found unreachable and past the grace.
    pub modified: SystemTime,
}

/// What became of one entry of a [`BlobStore::delete_blobs`] batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobDeleted {
    /// Its links and tags, then the blob, were removed.
    Deleted,
    /// The blob was already gone (links and tags still pointing at it were removed).
    Gone,
    /// It was written again (or is no longer a regular file): nothing was removed.
    Modified,
}

/// Where blob GC learns which image manifests containers on this node use.
#[async_trait]
pub trait ManifestsInUse: Send + Sync + 'static {
    /// Digests of the manifests (or indexes) of every image some container uses; an error
    /// when unknown (the pass then sweeps nothing).
    async fn manifests_in_use(&self) -> Result<Vec<String>, BoxError>;
}

#[async_trait]
impl ManifestsInUse for ContainerdClient {
    async fn manifests_in_use(&self) -> Result<Vec<String>, BoxError> {
        let mut out = Vec::new();
        let mut names: Vec<String> = self
            .list_containers(&[])
            .await?
            .into_iter()
            .map(|c| c.image)
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            if let Some(image) = self.get_image(&name).await? {
                out.push(image.target.digest);
            }
        }
        Ok(out)
    }
}

/// Tuning of blob GC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobGcConfig {
    /// Blobs whose mtime is younger than this are never swept (default 1 h).
    pub blob_grace: Duration,
}

impl Default for BlobGcConfig {
    fn default() -> Self {
        Self {
            blob_grace: DEFAULT_BLOB_GRACE,
        }
    }
}

/// Why a blob pass could not run at all (per-blob failures land in the report).
#[derive(Debug, thiserror::Error)]
pub enum BlobGcError {
    /// Artifacts could not be listed, so nothing can be proven unreachable.
    #[error("listing artifacts")]
    Artifacts(#[source] BoxError),
    /// The blob directory could not be listed.
    #[error("listing blobs")]
    ListBlobs(#[source] BoxError),
}

/// What a one-shot blob pass needs.
#[derive(Clone)]
pub struct BlobGcDeps {
    /// The artifact store.
    pub store: Arc<dyn BlobStore>,
    /// Where artifacts are listed (the entity server).
    pub entities: Arc<dyn EntitySource>,
    /// Images in use on this node, when known.
    pub in_use: Option<Arc<dyn ManifestsInUse>>,
    /// Grace.
    pub config: BlobGcConfig,
}

impl std::fmt::Debug for BlobGcDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobGcDeps")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One mark-and-sweep pass (what `converge reconcile --kind blobs` runs); see
/// [`BlobCollector::pass`]. Fails only when artifacts or the blob directory cannot be listed.
pub async fn blob_pass(deps: &BlobGcDeps, exec: &Executor) -> Result<GcPassReport, BlobGcError> {
    BlobCollector::new(deps.clone()).pass(exec).await
}

/// Blob GC as an engine reconciler keyed by [`GcKind::Blobs`] (other keys are ignored).
/// Wire it with `periodic("gc", gc_interval, Blobs)` and `watches(artifacts, blob_gc_keys)`.
pub type BlobReconciler = GcReconciler<BlobCollector>;

#[async_trait]
impl GcCollector for BlobCollector {
    const KIND: GcKind = GcKind::Blobs;
    type Error = BlobGcError;

    async fn pass(&self, exec: &Executor) -> Result<GcPassReport, BlobGcError> {
        BlobCollector::pass(self, exec).await
    }
}

/// Mapper for `Controller::watches` over artifact events: `[Blobs]` when an artifact was
/// archived or deleted, nothing otherwise.
pub fn blob_gc_keys(event: &StreamEvent) -> Vec<GcKind> {
    if is_artifact_retirement(event) {
        vec![GcKind::Blobs]
    } else {
        Vec::new()
    }
}
