//! Blob GC racing a push that reuses an old, unreferenced blob: the registry (real HTTP API on loopback) refreshes the mtime of every blob it vouches for, so a sweep that already chose the blob keeps it and the new manifest stays pullable.

mod blob_gc_support;
mod registry_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use blob_gc_support::{Env, HOUR, StoredImage};
use converge::registry::names::Digest;
use converge::registry::store::ArtifactStore;
use converge_reconcilers::blobs::{
    BlobDeleted, BlobDeletion, BlobDigest, BlobEntry, BlobStore, ReachError, blob_pass,
};
use converge_reconcilers::engine::{BoxError, Executor};
use registry_support::{RegistryServer, serve_registry};
use reqwest::{Client, StatusCode};
use serde_json::json;

/// A push of `demo/new:v1` that reuses an existing layer the way skopeo and docker do:
/// HEAD the layer (200, so it is not uploaded), upload a fresh config, PUT the manifest.
struct ReusingPush {
    url: String,
    layer: Digest,
    layer_len: u64,
}

/// What the push got back.
#[derive(Debug, Default, Clone)]
struct PushOutcome {
    head: u16,
    manifest_put: u16,
    manifest: Option<Digest>,
}

impl ReusingPush {
    async fn run(&self) -> PushOutcome {
        let c = Client::new();
        let head = c
            .head(format!("{}/v2/demo/new/blobs/{}", self.url, self.layer))
            .send()
            .await
            .expect("head layer")
            .status()
            .as_u16();
        let config =
            serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "new": true}))
                .expect("json");
        let config_digest = Digest::of(&config);
        let resp = c
            .post(format!(
                "{}/v2/demo/new/blobs/uploads/?digest={config_digest}",
                self.url
            ))
            .body(config.clone())
            .send()
            .await
            .expect("upload config");
        assert_eq!(resp.status(), StatusCode::CREATED, "config upload");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.as_str(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": self.layer.as_str(), "size": self.layer_len}],
        }))
        .expect("json");
        let resp = c
            .put(format!("{}/v2/demo/new/manifests/v1", self.url))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .await
            .expect("put manifest");
        PushOutcome {
            head,
            manifest_put: resp.status().as_u16(),
            manifest: Some(Digest::of(&manifest)),
        }
    }
}

/// The real store, except that the push runs right before the first batch deletion: after
/// the collector chose its candidates and re-checked their mtimes, before the store's own
/// re-check and unlink.
struct PushDuringSweep {
    inner: ArtifactStore,
    push: Option<ReusingPush>,
    fired: AtomicBool,
    outcome: std::sync::Mutex<PushOutcome>,
    batches: std::sync::Mutex<Vec<Vec<BlobDigest>>>,
}

#[async_trait]
impl BlobStore for PushDuringSweep {
    async fn list_blob_entries(&self) -> Result<Vec<BlobEntry>, BoxError> {
        self.inner.list_blob_entries().await
    }
    async fn blob_modified(&self, digest: &BlobDigest) -> Result<Option<SystemTime>, BoxError> {
        self.inner.blob_modified(digest).await
    }
    async fn reachable_from(
        &self,
        digest: &BlobDigest,
    ) -> Result<BTreeSet<BlobDigest>, ReachError> {
        BlobStore::reachable_from(&self.inner, digest).await
    }
    async fn linked_manifests(&self) -> Result<BTreeSet<BlobDigest>, BoxError> {
        self.inner.linked_manifests().await
    }
    async fn delete_blob(&self, digest: &BlobDigest) -> Result<bool, BoxError> {
        BlobStore::delete_blob(&self.inner, digest).await
    }
    async fn delete_blobs(&self, batch: &[BlobDeletion]) -> Vec<Result<BlobDeleted, BoxError>> {
        self.batches
            .lock()
            .expect("lock")
            .push(batch.iter().map(|b| b.digest.clone()).collect());
        if let Some(push) = &self.push
            && !self.fired.swap(true, Ordering::SeqCst)
        {
            let outcome = push.run().await;
            *self.outcome.lock().expect("lock") = outcome;
        }
        self.inner.delete_blobs(batch).await
    }
}

/// An archived artifact's image, every blob two hours old, and a registry serving the store.
struct Race {
    env: Env,
    old: StoredImage,
    registry: RegistryServer,
}

impl Race {
    async fn new() -> Race {
        let env = Env::new().await;
        let old = env
            .image("demo/old", &[b"layer-old, reused by the new push"])
            .await;
        env.entities.artifact("old", old.manifest.as_str(), true);
        env.age_all_blobs(2 * HOUR);
        let registry = serve_registry(env.store.clone()).await;
        Race { env, old, registry }
    }

    fn store(&self, push: bool) -> Arc<PushDuringSweep> {
        let layer = self.old.layers[0].clone();
        let layer_len = std::fs::metadata(self.env.blob_path(&layer))
            .expect("layer")
            .len();
        Arc::new(PushDuringSweep {
            inner: self.env.store.clone(),
            push: push.then(|| ReusingPush {
                url: self.registry.url.clone(),
                layer,
                layer_len,
            }),
            fired: AtomicBool::new(false),
            outcome: Default::default(),
            batches: Default::default(),
        })
    }

    fn planned(store: &PushDuringSweep, d: &Digest) -> bool {
        let d: BlobDigest = d.as_str().parse().expect("digest");
        store
            .batches
            .lock()
            .expect("lock")
            .iter()
            .any(|b| b.contains(&d))
    }

    /// Pulls `demo/new:v1` through the API: the manifest by tag, then every blob it names.
    async fn pull_new(&self) -> Result<(), String> {
        let c = Client::new();
        let url = &self.registry.url;
        let resp = c
            .get(format!("{url}/v2/demo/new/manifests/v1"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::OK {
            return Err(format!("manifest: {}", resp.status()));
        }
        let doc: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        let mut digests = vec![
            doc["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ];
        for l in doc["layers"].as_array().into_iter().flatten() {
            digests.push(l["digest"].as_str().unwrap_or_default().to_string());
        }
        for d in digests {
            let resp = c
                .get(format!("{url}/v2/demo/new/blobs/{d}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if resp.status() != StatusCode::OK {
                return Err(format!("blob {d}: {}", resp.status()));
            }
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            if Digest::of(&body).as_str() != d {
                return Err(format!("blob {d}: content does not match"));
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_push_reusing_a_planned_layer_keeps_it_and_the_new_image_stays_pullable() {
    let race = Race::new().await;
    let layer = race.old.layers[0].clone();
    let store = race.store(true);

    let report = blob_pass(
        &race.env.deps_with(store.clone(), HOUR, None),
        &Executor::real(),
    )
    .await
    .expect("pass");

    let outcome = store.outcome.lock().expect("lock").clone();
    assert_eq!(outcome.head, 200, "the registry vouched for the layer");
    assert_eq!(outcome.manifest_put, 201, "{outcome:?}");
    assert!(
        Race::planned(&store, &layer),
        "the collector had chosen the layer before the push"
    );
    assert!(race.env.has_blob(&layer), "the reused layer is kept");
    assert!(
        report
            .kept
            .iter()
            .any(|k| k.target == format!("blob/{layer}")
                && k.reason.contains("modified during the pass")),
        "{:?}",
        report.kept
    );
    // What the push did not reuse still goes.
    assert!(!race.env.has_blob(&race.old.manifest));
    assert!(!race.env.has_blob(&race.old.config));
    assert_eq!(report.summary.deleted, 2, "{report:#?}");
    race.pull_new().await.expect("the new image is pullable");

    // The next pass, with the new image's artifact active and every blob old again, keeps
    // it by reachability alone.
    let new_manifest = outcome.manifest.expect("manifest digest");
    race.env
        .entities
        .artifact("new", new_manifest.as_str(), false);
    race.env.age_all_blobs(2 * HOUR);
    let report = blob_pass(&race.env.deps(HOUR), &Executor::real())
        .await
        .expect("second pass");
    assert_eq!(report.summary.deleted, 0, "{report:#?}");
    assert!(race.env.has_blob(&layer) && race.env.has_blob(&new_manifest));
    race.pull_new()
        .await
        .expect("still pullable after the second pass");
}

#[tokio::test]
async fn without_the_push_the_archived_layer_is_swept() {
    let race = Race::new().await;
    let store = race.store(false);

    let report = blob_pass(
        &race.env.deps_with(store.clone(), HOUR, None),
        &Executor::real(),
    )
    .await
    .expect("pass");

    assert_eq!(report.summary.deleted, 3, "{report:#?}");
    assert!(!race.env.has_blob(&race.old.layers[0]));
    assert!(!race.env.has_blob(&race.old.manifest) && !race.env.has_blob(&race.old.config));
}

fn mtime(env: &Env, d: &Digest) -> SystemTime {
    std::fs::metadata(env.blob_path(d))
        .and_then(|m| m.modified())
        .expect("mtime")
}

fn fresh(env: &Env, d: &Digest) -> bool {
    SystemTime::now()
        .duration_since(mtime(env, d))
        .unwrap_or(Duration::ZERO)
        < Duration::from_secs(600)
}

#[tokio::test]
async fn every_way_the_registry_vouches_for_an_existing_blob_refreshes_its_mtime_and_a_get_does_not()
 {
    let race = Race::new().await;
    let env = &race.env;
    let url = &race.registry.url;
    let c = Client::new();
    let (layer, config, manifest) = (
        race.old.layers[0].clone(),
        race.old.config.clone(),
        race.old.manifest.clone(),
    );

    let resp = c
        .get(format!("{url}/v2/demo/old/blobs/{layer}"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!fresh(env, &layer), "a GET (a pull) leaves the mtime alone");

    let resp = c
        .head(format!("{url}/v2/demo/old/blobs/{layer}"))
        .send()
        .await
        .expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(fresh(env, &layer), "HEAD");

    let resp = c
        .post(format!(
            "{url}/v2/demo/other/blobs/uploads/?mount={config}&from=demo/old"
        ))
        .send()
        .await
        .expect("mount");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(fresh(env, &config), "cross-repository mount");

    env.age_all_blobs(2 * HOUR);
    let bytes = std::fs::read(env.blob_path(&layer)).expect("layer bytes");
    let resp = c
        .post(format!("{url}/v2/demo/other/blobs/uploads/?digest={layer}"))
        .body(bytes.clone())
        .send()
        .await
        .expect("monolithic");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(fresh(env, &layer), "monolithic upload of stored content");

    env.age_all_blobs(2 * HOUR);
    let resp = c
        .post(format!("{url}/v2/demo/other/blobs/uploads/"))
        .send()
        .await
        .expect("start");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let resp = c
        .put(format!("{url}{location}?digest={layer}"))
        .body(bytes)
        .send()
        .await
        .expect("finish");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(fresh(env, &layer), "chunked upload of stored content");

    // An index naming the old manifest refreshes the child and what the child references.
    env.age_all_blobs(2 * HOUR);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest.as_str(), "size": 1}],
    }))
    .expect("json");
    let resp = c
        .put(format!("{url}/v2/demo/other/manifests/multi"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .await
        .expect("put index");
    assert_eq!(resp.status(), StatusCode::CREATED);
    for (what, d) in [("child", &manifest), ("config", &config), ("layer", &layer)] {
        assert!(fresh(env, d), "index push refreshes its {what}");
    }
    let resp = c
        .get(format!("{url}/v2/demo/other/manifests/{manifest}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get child");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the child is linked where the index is"
    );
}
