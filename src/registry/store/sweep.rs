//! Blob GC's side of the store, in batches: one scan of every repository's links and tags per batch, links and tags of swept manifests removed (and made durable) before their blob, one fsync per touched directory per batch.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::repos::repository_dirs;
use super::{ArtifactStore, ArtifactStoreError, io};
use crate::registry::names::{Digest, Tag};

/// Why a blocking store task produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A filesystem operation failed or the store holds a malformed entry.
    #[error(transparent)]
    Store(#[from] ArtifactStoreError),
    /// The blocking task running the operation panicked or was cancelled.
    #[error("blob sweep task ended abnormally")]
    Interrupted(#[source] tokio::task::JoinError),
}

/// Every repository link and tag in the store, by the manifest digest it points at: the
/// marker files `repositories/<name>/_manifests/<hex>` and the tag files whose content is
/// the digest. A snapshot: links written after [`ArtifactStore::link_index`] returned are
/// not in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkIndex {
    by_digest: BTreeMap<Digest, Vec<PathBuf>>,
}

impl LinkIndex {
    /// Every manifest linked or tagged in some repository.
    pub fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.by_digest.keys()
    }

    /// The marker and tag files pointing at `digest` (empty for layers and configs).
    pub fn files_of(&self, digest: &Digest) -> &[PathBuf] {
        self.by_digest.get(digest).map_or(&[], Vec::as_slice)
    }
}

/// What one blob of a [`ArtifactStore::sweep_blobs`] batch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweptBlob {
    /// Its links and tags, then the blob, were removed and the removals fsynced.
    Deleted,
    /// The blob was already gone; links and tags still pointing at it were removed.
    Gone,
    /// Its mtime is no longer the expected one (written again), or it is no longer a
    /// regular file: nothing was removed.
    Modified,
}

impl ArtifactStore {
    /// Scans every repository once (on the blocking pool) for manifest links and tags.
    /// Fails when a directory cannot be read or a tag holds something that is not a digest.
    pub async fn link_index(&self) -> Result<LinkIndex, SweepError> {
        let root = self.root().to_path_buf();
        tokio::task::spawn_blocking(move || scan_links(&root))
            .await
            .map_err(SweepError::Interrupted)?
            .map_err(SweepError::from)
    }

    /// Deletes each `(digest, mtime)` of `batch` whose blob still has exactly that mtime,
    /// together with every repository link and tag pointing at it; returns one outcome per
    /// entry, in order. Links are found with one [`LinkIndex`] scan for the whole batch;
    /// all link and tag removals are fsynced (once per directory) before the first blob is
    /// removed, and the blob directory is fsynced once at the end. Each blob's mtime is
    /// re-read right before its links go and again right before it is unlinked: a blob
    /// written in between keeps its file (its links are gone then, as after a crash
    /// between the two steps; the next pass judges it again). Fails as a whole only when
    /// the link scan fails (nothing removed then); a failure on one entry is that entry's
    /// error and leaves its blob in place.
    pub async fn sweep_blobs(
        &self,
        batch: Vec<(Digest, SystemTime)>,
    ) -> Result<Vec<Result<SweptBlob, ArtifactStoreError>>, SweepError> {
        let root = self.root().to_path_buf();
        tokio::task::spawn_blocking(move || sweep_batch(&root, &batch))
            .await
            .map_err(SweepError::Interrupted)?
            .map_err(SweepError::from)
    }
}

/// Records every link marker and tag file of every repository (see [`repository_dirs`])
/// by target digest.
fn scan_links(root: &Path) -> Result<LinkIndex, ArtifactStoreError> {
    let mut index = LinkIndex::default();
    for (_, dir) in repository_dirs(root)? {
        let markers = dir.join("_manifests");
        for name in visible_names(&markers)? {
            if let Ok(d) = Digest::from_hex(&name) {
                index
                    .by_digest
                    .entry(d)
                    .or_default()
                    .push(markers.join(name));
            }
        }
        let tags = dir.join("_tags");
        for name in visible_names(&tags)? {
            if name.parse::<Tag>().is_err() {
                continue;
            }
            let path = tags.join(&name);
            let target: Digest = match std::fs::read_to_string(&path) {
                Ok(s) => s.trim().parse()?,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &path)(e)),
            };
            index.by_digest.entry(target).or_default().push(path);
        }
    }
    Ok(index)
}

fn read_dir_or_empty(
    dir: &Path,
) -> Result<Box<dyn Iterator<Item = std::io::Result<std::fs::DirEntry>>>, ArtifactStoreError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Box::new(rd)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(io("list", dir)(e)),
    }
}

/// Entry names of `dir` not starting with `.` (temp files of atomic writes); empty when
/// `dir` does not exist.
fn visible_names(dir: &Path) -> Result<Vec<String>, ArtifactStoreError> {
    let mut out = Vec::new();
    for entry in read_dir_or_empty(dir)? {
        let entry = entry.map_err(io("list", dir))?;
        if let Some(n) = entry.file_name().to_str()
            && !n.starts_with('.')
        {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Where one batch entry stands while the batch runs.
enum Step {
    /// Still to be deleted (its blob matched the expected mtime).
    Doomed,
    /// Settled.
    Done(Result<SweptBlob, ArtifactStoreError>),
}

/// `Some(true)` when `path` is a regular file with mtime `expected`, `Some(false)` when it
/// is something else, `None` when it does not exist.
fn still_unmodified(path: &Path, expected: SystemTime) -> Result<Option<bool>, ArtifactStoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let modified = m.modified().map_err(io("stat", path))?;
            Ok(Some(m.file_type().is_file() && modified == expected))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("stat", path)(e)),
    }
}

fn sweep_batch(
    root: &Path,
    batch: &[(Digest, SystemTime)],
) -> Result<Vec<Result<SweptBlob, ArtifactStoreError>>, ArtifactStoreError> {
    let links = scan_links(root)?;
    let blob_dir = root.join("blobs/sha256");
    let mut steps: Vec<Step> = Vec::with_capacity(batch.len());
    // Links and tags first, for blobs still unmodified and for blobs already gone.
    let mut touched: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for (i, (digest, expected)) in batch.iter().enumerate() {
        let step = match still_unmodified(&blob_dir.join(digest.hex()), *expected) {
            Ok(Some(false)) => Step::Done(Ok(SweptBlob::Modified)),
            Ok(found) => match remove_links(digest, links.files_of(digest), &mut touched, i) {
                Ok(()) if found.is_some() => Step::Doomed,
                Ok(()) => Step::Done(Ok(SweptBlob::Gone)),
                Err(e) => Step::Done(Err(e)),
            },
            Err(e) => Step::Done(Err(e)),
        };
        steps.push(step);
    }
    for (dir, owners) in &touched {
        if let Err(e) = sync_dir_blocking(dir) {
            // Not durable: keep these blobs so no tag can outlive its manifest.
            for &i in owners {
                if matches!(steps[i], Step::Doomed) {
                    steps[i] = Step::Done(Err(io("fsync dir", dir)(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    ))));
                }
            }
        }
    }
    let mut removed = Vec::new();
    for (i, (digest, expected)) in batch.iter().enumerate() {
        if !matches!(steps[i], Step::Doomed) {
            continue;
        }
        let path = blob_dir.join(digest.hex());
        steps[i] = Step::Done(match still_unmodified(&path, *expected) {
            Ok(Some(true)) => match std::fs::remove_file(&path) {
                Ok(()) => {
                    removed.push(i);
                    Ok(SweptBlob::Deleted)
                }
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(SweptBlob::Gone),
                Err(e) => Err(io("delete", &path)(e)),
            },
            Ok(Some(false)) => Ok(SweptBlob::Modified),
            Ok(None) => Ok(SweptBlob::Gone),
            Err(e) => Err(e),
        });
    }
    if !removed.is_empty()
        && let Err(e) = sync_dir_blocking(&blob_dir)
    {
        for i in removed {
            steps[i] = Step::Done(Err(io("fsync dir", &blob_dir)(std::io::Error::new(
                e.kind(),
                e.to_string(),
            ))));
        }
    }
    Ok(steps
        .into_iter()
        .map(|s| match s {
            Step::Done(r) => r,
            // Every entry was settled above; an unsettled one was not deleted.
            Step::Doomed => Ok(SweptBlob::Modified),
        })
        .collect())
}

/// Removes `files` (links and tags of manifest `digest`; a tag only while it still points
/// at `digest`), recording each parent directory as
/// touched by batch entry `owner`. Already-removed files are fine.
fn remove_links(
    digest: &Digest,
    files: &[PathBuf],
    touched: &mut BTreeMap<PathBuf, Vec<usize>>,
    owner: usize,
) -> Result<(), ArtifactStoreError> {
    let mut dirs = BTreeSet::new();
    for file in files {
        let is_tag = file
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "_tags");
        if is_tag && !tag_still_points_at(file, digest)? {
            continue; // moved to another manifest since the scan
        }
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("delete", file)(e)),
        }
        if let Some(dir) = file.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    for dir in dirs {
        touched.entry(dir).or_default().push(owner);
    }
    Ok(())
}

/// Whether tag file `path` still holds `digest` (false when it is gone or holds another).
fn tag_still_points_at(path: &Path, digest: &Digest) -> Result<bool, ArtifactStoreError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim() == digest.as_str()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("read", path)(e)),
    }
}

fn sync_dir_blocking(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
