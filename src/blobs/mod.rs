//! Blob GC over the registry's on-disk [`ArtifactStore`]: the store's side of [`BlobStore`], so the mark-and-sweep in `converge_reconcilers::blobs` can run while the registry serves.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::time::SystemTime;

use async_trait::async_trait;
use converge_reconcilers::blobs::{
    BlobDeleted, BlobDeletion, BlobDigest, BlobEntry, BlobStore, ReachError,
};
use converge_reconcilers::engine::BoxError;

use crate::registry::names::Digest;
use crate::registry::store::{ArtifactStore, ArtifactStoreError, SweptBlob};

pub use converge_reconcilers::blobs::{
    BlobCollector, BlobGcConfig, BlobGcDeps, BlobGcError, BlobReconciler, blob_gc_keys, blob_pass,
};

/// Why the blob directory could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum BlobListError {
    /// Reading the directory or an entry's metadata failed.
    #[error("listing {path}")]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The store's digest for a validated blob digest (both accept exactly the same strings).
fn store_digest(d: &BlobDigest) -> Result<Digest, BoxError> {
    Digest::from_hex(d.hex()).map_err(|e| Box::new(e) as BoxError)
}

fn blob_digest(d: &Digest) -> Option<BlobDigest> {
    BlobDigest::from_hex(d.hex()).ok()
}

#[async_trait]
impl BlobStore for ArtifactStore {
    async fn list_blob_entries(&self) -> Result<Vec<BlobEntry>, BoxError> {
        let dir = self.root().join("blobs/sha256");
        let err = |source| BlobListError::Io {
            path: dir.clone(),
            source,
        };
        let mut rd = tokio::fs::read_dir(&dir).await.map_err(err)?;
        let mut out = Vec::new();
        while let Some(entry) = rd.next_entry().await.map_err(err)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                continue; // an atomic write in flight
            }
            // symlink_metadata: never follow a link out of the store.
            let meta = match tokio::fs::symlink_metadata(entry.path()).await {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Box::new(err(e))),
            };
            out.push(BlobEntry {
                name,
                size: meta.len(),
                modified: meta.modified().map_err(err)?,
                regular_file: meta.file_type().is_file(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn blob_modified(&self, digest: &BlobDigest) -> Result<Option<SystemTime>, BoxError> {
        Ok(self
            .blob_info(&store_digest(digest)?)
            .await?
            .map(|i| i.modified))
    }

    async fn reachable_from(
        &self,
        digest: &BlobDigest,
    ) -> Result<BTreeSet<BlobDigest>, ReachError> {
        let d = store_digest(digest).map_err(ReachError::Io)?;
        match ArtifactStore::reachable_from(self, &d).await {
            Ok(set) => Ok(set.iter().filter_map(blob_digest).collect()),
            Err(e @ (ArtifactStoreError::BadManifest { .. } | ArtifactStoreError::TooLarge(_))) => {
                Err(ReachError::Unparsable {
                    digest: digest.clone(),
                    source: Box::new(e),
                })
            }
            Err(e) => Err(ReachError::Io(Box::new(e))),
        }
    }

    async fn linked_manifests(&self) -> Result<BTreeSet<BlobDigest>, BoxError> {
        let index = self.link_index().await?;
        Ok(index.digests().filter_map(blob_digest).collect())
    }

    async fn delete_blob(&self, digest: &BlobDigest) -> Result<bool, BoxError> {
        let d = store_digest(digest)?;
        // Links and tags first: a crash after this leaves an unreferenced blob for the
        // next pass, never a tag pointing at nothing.
        for repo in self.list_repositories().await? {
            let linked = self.repository_manifests(&repo).await?.contains(&d)
                || self.tag_targets(&repo).await?.iter().any(|(_, t)| t == &d);
            if linked {
                self.delete_manifest(&repo, &d).await?;
            }
        }
        Ok(ArtifactStore::delete_blob(self, &d).await?)
    }

    /// One [`ArtifactStore::sweep_blobs`] call for the whole batch: one link scan, links
    /// fsynced before blobs, one fsync of the blob directory.
    async fn delete_blobs(&self, batch: &[BlobDeletion]) -> Vec<Result<BlobDeleted, BoxError>> {
        let mut entries = Vec::with_capacity(batch.len());
        for b in batch {
            match store_digest(&b.digest) {
                Ok(d) => entries.push((d, b.modified)),
                // Both digest types accept the same strings; fail the batch rather than skip.
                Err(e) => return batch_failed(batch.len(), &*e),
            }
        }
        match self.sweep_blobs(entries).await {
            Ok(outcomes) => outcomes
                .into_iter()
                .map(|o| {
                    o.map(|s| match s {
                        SweptBlob::Deleted => BlobDeleted::Deleted,
                        SweptBlob::Gone => BlobDeleted::Gone,
                        SweptBlob::Modified => BlobDeleted::Modified,
                    })
                    .map_err(|e| Box::new(e) as BoxError)
                })
                .collect(),
            Err(e) => batch_failed(batch.len(), &e),
        }
    }
}

/// `n` copies of one batch-wide failure (nothing was deleted).
fn batch_failed(n: usize, e: &dyn std::error::Error) -> Vec<Result<BlobDeleted, BoxError>> {
    let mut why = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        why.push_str(": ");
        why.push_str(&s.to_string());
        cur = s.source();
    }
    (0..n)
        .map(|_| Err(format!("batch not deleted: {why}").into()))
        .collect()
}
