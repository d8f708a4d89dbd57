//! Shared set-up for the blob GC tests: a real on-disk artifact store in a temp dir, images written into it, artifacts served by an in-memory entity source.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use converge::registry::names::{Digest, RepoName, Tag};
use converge::registry::store::ArtifactStore;
use converge_reconcilers::blobs::{BlobGcConfig, BlobGcDeps, BlobStore, ManifestsInUse};
use converge_reconcilers::engine::BoxError;
use converge_reconcilers::gc_report::EntitySource;
use converge_watch::{Entity, EntityId, Kind};
use serde_json::json;

/// Artifacts (and anything else) kept in memory, answering like the server would.
#[derive(Default)]
pub struct FakeEntities(pub Mutex<Vec<Entity>>);

impl FakeEntities {
    /// Adds or replaces artifact `name`.
    pub fn artifact(&self, name: &str, manifest: &str, archived: bool) {
        let id = EntityId::new(Kind::Artifact, name).expect("artifact id");
        let state = if archived { "archived" } else { "active" };
        let e = Entity::new(
            id.clone(),
            json!({"image": format!("cluster.local:5000/{name}:v1"), "manifest": manifest, "state": state}),
        );
        let mut all = self.0.lock().expect("lock");
        all.retain(|x| x.id != id);
        all.push(e);
    }
}

#[async_trait]
impl EntitySource for FakeEntities {
    async fn get(&self, id: &EntityId) -> Result<Option<Entity>, BoxError> {
        Ok(self
            .0
            .lock()
            .expect("lock")
            .iter()
            .find(|e| &e.id == id)
            .cloned())
    }
    async fn list(&self, kind: Kind) -> Result<Vec<Entity>, BoxError> {
        Ok(self
            .0
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect())
    }
}

/// Manifests some container uses, fixed by the test.
pub struct FixedInUse(pub Vec<String>);

#[async_trait]
impl ManifestsInUse for FixedInUse {
    async fn manifests_in_use(&self) -> Result<Vec<String>, BoxError> {
        Ok(self.0.clone())
    }
}

/// One image written into the store.
pub struct StoredImage {
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

/// A store in a temp dir.
pub struct Env {
    pub store: ArtifactStore,
    pub entities: Arc<FakeEntities>,
    _dir: tempfile::TempDir,
}

impl Env {
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ArtifactStore::open(dir.path().join("artifacts"))
            .await
            .expect("open store");
        Env {
            store,
            entities: Arc::new(FakeEntities::default()),
            _dir: dir,
        }
    }

    pub fn deps(&self, grace: Duration) -> BlobGcDeps {
        self.deps_with(Arc::new(self.store.clone()), grace, None)
    }

    pub fn deps_with(
        &self,
        store: Arc<dyn BlobStore>,
        grace: Duration,
        in_use: Option<Vec<String>>,
    ) -> BlobGcDeps {
        BlobGcDeps {
            store,
            entities: self.entities.clone(),
            in_use: in_use.map(|v| Arc::new(FixedInUse(v)) as Arc<dyn ManifestsInUse>),
            config: BlobGcConfig { blob_grace: grace },
        }
    }

    /// Writes config, layers and an OCI manifest, links it as `repo:v1`.
    pub async fn image(&self, repo: &str, layers: &[&[u8]]) -> StoredImage {
        let config_bytes =
            serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "repo": repo}))
                .expect("json");
        let config = self.store.put_blob(&config_bytes).await.expect("config");
        let mut layer_digests = Vec::new();
        let mut descs = Vec::new();
        for l in layers {
            let d = self.store.put_blob(l).await.expect("layer");
            descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.as_str(), "size": l.len()}));
            layer_digests.push(d);
        }
        let manifest_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.as_str(), "size": config_bytes.len()},
            "layers": descs,
        }))
        .expect("json");
        let manifest = self
            .store
            .put_blob(&manifest_bytes)
            .await
            .expect("manifest");
        let repo: RepoName = repo.parse().expect("repo");
        let tag: Tag = "v1".parse().expect("tag");
        self.store
            .link_manifest(&repo, &manifest, Some(&tag))
            .await
            .expect("link");
        StoredImage {
            manifest,
            config,
            layers: layer_digests,
        }
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.store.root().join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    /// Sets the mtime of every file under `blobs/sha256` to `age` ago.
    pub fn age_all_blobs(&self, age: Duration) {
        let dir = self.store.root().join("blobs/sha256");
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                set_age(&path, age);
            }
        }
    }

    /// Every file under the store with its size and mtime.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, (u64, SystemTime)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.store.root().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir") {
                let entry = entry.expect("entry");
                let meta = std::fs::symlink_metadata(entry.path()).expect("meta");
                if meta.is_dir() {
                    stack.push(entry.path());
                }
                out.insert(entry.path(), (meta.len(), meta.modified().expect("mtime")));
            }
        }
        out
    }
}

/// Sets `path`'s mtime to `age` ago.
pub fn set_age(path: &Path, age: Duration) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for mtime");
    f.set_modified(SystemTime::now() - age).expect("set mtime");
}

pub const HOUR: Duration = Duration::from_secs(3600);
