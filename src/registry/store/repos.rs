//! Repositories in the artifact store: which manifests belong to a repository, tags pointing
//! at them, and the listings the catalog, tags API and blob GC read.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tokio::fs;

use super::{
    ArtifactStore, ArtifactStoreError, Result, io, list_names, remove_if_exists, write_atomic,
};
use crate::registry::media::referenced_digests;
use crate::registry::names::{Digest, Reference, RepoName, Tag};

impl ArtifactStore {
    /// Records that manifest `digest` belongs to `repo`, and points `tag` at it if given.
    pub async fn link_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        tag: Option<&Tag>,
    ) -> Result<()> {
        let marker = self.repo_dir(repo).join("_manifests").join(digest.hex());
        write_atomic(&marker, b"").await?;
        if let Some(tag) = tag {
            let path = self.repo_dir(repo).join("_tags").join(tag.as_str());
            write_atomic(&path, digest.as_str().as_bytes()).await?;
        }
        Ok(())
    }

    /// The digest `reference` names in `repo`: a tag's target, or a digest linked to the
    /// repository. `None` when unknown.
    pub async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Option<Digest>> {
        match reference {
            Reference::Tag(tag) => {
                let path = self.repo_dir(repo).join("_tags").join(tag.as_str());
                match fs::read_to_string(&path).await {
                    Ok(s) => Ok(Some(s.trim().parse()?)),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io("read", &path)(e)),
                }
            }
            Reference::Digest(d) => {
                let marker = self.repo_dir(repo).join("_manifests").join(d.hex());
                match fs::metadata(&marker).await {
                    Ok(_) => Ok(Some(d.clone())),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io("stat", &marker)(e)),
                }
            }
        }
    }

    /// Tags of `repo`, sorted; empty if the repository is unknown.
    pub async fn list_tags(&self, repo: &RepoName) -> Result<Vec<Tag>> {
        let mut tags: Vec<Tag> = list_names(&self.repo_dir(repo).join("_tags"))
            .await?
            .into_iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// `(tag, digest)` pairs of `repo`, sorted by tag.
    pub async fn tag_targets(&self, repo: &RepoName) -> Result<Vec<(Tag, Digest)>> {
        let mut out = Vec::new();
        for tag in self.list_tags(repo).await? {
            if let Some(d) = self.resolve(repo, &Reference::Tag(tag.clone())).await? {
                out.push((tag, d));
            }
        }
        Ok(out)
    }

    /// Manifest digests linked to `repo`, sorted.
    pub async fn repository_manifests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let mut out: Vec<Digest> = list_names(&self.repo_dir(repo).join("_manifests"))
            .await?
            .iter()
            .filter_map(|n| Digest::from_hex(n).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every repository holding at least one manifest or tag, sorted.
    pub async fn list_repositories(&self) -> Result<Vec<RepoName>> {
        let root = self.root.clone();
        let dirs = tokio::task::spawn_blocking(move || repository_dirs(&root))
            .await
            .map_err(|e| ArtifactStoreError::Io {
                op: "list",
                path: self.root.join("repositories"),
                source: std::io::Error::other(e),
            })??;
        let mut out: Vec<RepoName> = dirs.into_iter().map(|(repo, _)| repo).collect();
        out.sort();
        Ok(out)
    }

    /// Removes a tag; returns whether it existed.
    pub async fn untag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        remove_if_exists(&self.repo_dir(repo).join("_tags").join(tag.as_str())).await
    }

    /// Unlinks manifest `digest` from `repo` and removes every tag pointing to it; returns
    /// whether it was linked. The blob itself stays for blob GC to collect.
    pub async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        for (tag, target) in self.tag_targets(repo).await? {
            if &target == digest {
                self.untag(repo, &tag).await?;
            }
        }
        remove_if_exists(&self.repo_dir(repo).join("_manifests").join(digest.hex())).await
    }

    /// Everything manifest `digest` keeps alive, for blob GC: the manifest itself, its config
    /// and layers, and for an index its child manifests and everything they keep alive.
    /// Referenced blobs that are absent are included too (they are names, not files); a
    /// missing child manifest is not descended into. Fails with
    /// [`ArtifactStoreError::BadManifest`] when a present manifest does not parse.
    pub async fn reachable_from(&self, digest: &Digest) -> Result<BTreeSet<Digest>> {
        let mut seen = BTreeSet::new();
        let mut manifests = vec![digest.clone()];
        while let Some(m) = manifests.pop() {
            if !seen.insert(m.clone()) {
                continue;
            }
            let Some(bytes) = self.read_manifest(&m).await? else {
                continue;
            };
            let bad = |message: String| ArtifactStoreError::BadManifest {
                digest: m.clone(),
                message,
            };
            let doc: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
            let (blobs, children) = referenced_digests(&doc).map_err(|e| bad(e.to_string()))?;
            seen.extend(blobs);
            manifests.extend(children);
        }
        Ok(seen)
    }
}

/// Every repository under `<root>/repositories` (a directory holding `_manifests` or
/// `_tags` whose path below it is a valid repository name) with its directory, in walk
/// order. Blocking: call it from a blocking task. A missing directory counts as empty;
/// any other filesystem error fails the walk.
pub(super) fn repository_dirs(root: &Path) -> Result<Vec<(RepoName, PathBuf)>> {
    let base = root.join("repositories");
    let mut out = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io("list", &dir)(e)),
        };
        let mut is_repo = false;
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == "_manifests" || name == "_tags" {
                is_repo = true;
            } else if entry
                .file_type()
                .map_err(io("stat", &entry.path()))?
                .is_dir()
            {
                stack.push(entry.path());
            }
        }
        if is_repo
            && let Some(rel) = dir.strip_prefix(&base).ok().and_then(Path::to_str)
            && let Ok(repo) = rel.parse()
        {
            out.push((repo, dir));
        }
    }
    Ok(out)
}
