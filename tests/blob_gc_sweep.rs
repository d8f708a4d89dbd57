//! Blob GC against a real on-disk artifact store: what is swept, what is kept, dry-run, hostile file names, blobs written during the pass.

mod blob_gc_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use blob_gc_support::{Env, HOUR, set_age};
use converge::registry::names::{RepoName, Tag};
use converge::registry::store::ArtifactStore;
use converge_reconcilers::blobs::{BlobDigest, BlobEntry, BlobStore, ReachError, blob_pass};
use converge_reconcilers::engine::{BoxError, Executor};

#[tokio::test]
async fn blobs_of_an_archived_artifact_are_swept_with_its_tag() {
    let env = Env::new().await;
    let old = env.image("demo/old", &[b"layer-old"]).await;
    let kept = env.image("demo/new", &[b"layer-new"]).await;
    env.entities.artifact("old", old.manifest.as_str(), true);
    env.entities.artifact("new", kept.manifest.as_str(), false);
    env.age_all_blobs(2 * HOUR);

    let report = blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    assert!(!env.has_blob(&old.manifest));
    assert!(!env.has_blob(&old.config));
    assert!(!env.has_blob(&old.layers[0]));
    assert!(
        env.has_blob(&kept.manifest) && env.has_blob(&kept.config) && env.has_blob(&kept.layers[0])
    );
    assert_eq!(report.summary.deleted, 3, "{report:#?}");
    assert!(report.summary.bytes_freed > 0);
    let repo: RepoName = "demo/old".parse().expect("repo");
    assert!(
        env.store.list_tags(&repo).await.expect("tags").is_empty(),
        "tag of the archived manifest is gone"
    );
    assert!(
        env.store
            .repository_manifests(&repo)
            .await
            .expect("links")
            .is_empty()
    );
    let again = blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("second pass");
    assert_eq!(again.summary.deleted, 0, "a second pass finds nothing left");
}

#[tokio::test]
async fn layers_an_active_artifact_shares_with_an_archived_one_are_kept() {
    let env = Env::new().await;
    let old = env.image("demo/old", &[b"shared-base", b"old-top"]).await;
    let new = env.image("demo/new", &[b"shared-base", b"new-top"]).await;
    env.entities.artifact("old", old.manifest.as_str(), true);
    env.entities.artifact("new", new.manifest.as_str(), false);
    env.age_all_blobs(2 * HOUR);

    blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    assert!(env.has_blob(&old.layers[0]), "shared base layer kept");
    assert!(!env.has_blob(&old.layers[1]));
    assert!(!env.has_blob(&old.manifest));
    assert!(env.has_blob(&new.layers[1]));
}

#[tokio::test]
async fn an_archived_image_still_used_by_a_container_keeps_its_blobs() {
    let env = Env::new().await;
    let old = env.image("demo/old", &[b"layer"]).await;
    env.entities.artifact("old", old.manifest.as_str(), true);
    env.age_all_blobs(2 * HOUR);
    let deps = env.deps_with(
        Arc::new(env.store.clone()),
        HOUR,
        Some(vec![old.manifest.as_str().to_string()]),
    );

    let report = blob_pass(&deps, &Executor::real()).await.expect("pass");

    assert_eq!(report.summary.deleted, 0);
    assert_eq!(report.summary.kept_in_use, 1);
    assert!(env.has_blob(&old.layers[0]) && env.has_blob(&old.manifest));
}

#[tokio::test]
async fn unreferenced_blobs_younger_than_the_grace_are_kept() {
    let env = Env::new().await;
    let stray = env.store.put_blob(b"just uploaded").await.expect("blob");
    let old_stray = env.store.put_blob(b"long forgotten").await.expect("blob");
    set_age(&env.blob_path(&old_stray), 2 * HOUR);

    let report = blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    assert!(env.has_blob(&stray));
    assert!(!env.has_blob(&old_stray));
    assert_eq!(report.summary.deleted, 1);
}

#[tokio::test]
async fn a_manifest_pushed_before_its_artifact_exists_keeps_its_old_layers() {
    let env = Env::new().await;
    // Layers pushed long ago, then a fresh manifest referencing them, not linked yet.
    let img = env.image("demo/app", &[b"old-layer"]).await;
    env.age_all_blobs(2 * HOUR);
    set_age(&env.blob_path(&img.manifest), Duration::from_secs(5));
    let repo: RepoName = "demo/app".parse().expect("repo");
    env.store
        .delete_manifest(&repo, &img.manifest)
        .await
        .expect("unlink");

    blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    assert!(env.has_blob(&img.layers[0]) && env.has_blob(&img.config));
}

#[tokio::test]
async fn images_pushed_without_an_artifact_stay_while_tagged() {
    let env = Env::new().await;
    let img = env.image("tools/skopeo-pushed", &[b"layer"]).await;
    env.age_all_blobs(2 * HOUR);

    let report = blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    assert_eq!(report.summary.deleted, 0);
    assert!(env.has_blob(&img.layers[0]));
    let repo: RepoName = "tools/skopeo-pushed".parse().expect("repo");
    let tag: Tag = "v1".parse().expect("tag");
    assert_eq!(
        env.store.tag_targets(&repo).await.expect("tags"),
        vec![(tag, img.manifest.clone())]
    );
}

#[tokio::test]
async fn an_unparsable_manifest_of_an_active_artifact_stops_the_sweep_and_is_reported() {
    let env = Env::new().await;
    let broken = env
        .store
        .put_blob(b"{ this is not json")
        .await
        .expect("blob");
    env.entities.artifact("broken", broken.as_str(), false);
    let stray = env.store.put_blob(b"unreferenced").await.expect("blob");
    env.age_all_blobs(2 * HOUR);

    let report = blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    assert_eq!(report.summary.deleted, 0);
    assert!(env.has_blob(&stray) && env.has_blob(&broken));
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("nothing swept") && p.contains(broken.as_str())),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn file_names_that_are_not_digests_are_ignored_and_reported() {
    let env = Env::new().await;
    let dir = env.store.root().join("blobs/sha256");
    let names = [
        format!("..{}", "a".repeat(62)),
        "b".repeat(63),
        "C".repeat(64),
        format!("{}.x", "d".repeat(62)),
    ];
    for n in &names {
        std::fs::write(dir.join(n), b"junk").expect("write");
    }
    std::os::unix::fs::symlink("/etc/hostname", dir.join("e".repeat(64))).expect("symlink");
    env.age_all_blobs(2 * HOUR);

    let report = blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    for n in &names {
        assert!(dir.join(n).exists(), "{n} untouched");
        assert!(
            report.problems.iter().any(|p| p.contains(n.as_str())),
            "{n} reported: {:?}",
            report.problems
        );
    }
    assert!(
        std::fs::symlink_metadata(dir.join("e".repeat(64))).is_ok(),
        "symlink untouched"
    );
    assert!(std::path::Path::new("/etc/hostname").exists());
    assert_eq!(report.summary.deleted, 0);
}

#[tokio::test]
async fn a_dry_run_plans_the_sweep_and_changes_nothing() {
    let env = Env::new().await;
    let old = env.image("demo/old", &[b"old-layer"]).await;
    let new = env.image("demo/new", &[b"new-layer"]).await;
    env.entities.artifact("old", old.manifest.as_str(), true);
    env.entities.artifact("new", new.manifest.as_str(), false);
    env.store.put_blob(b"stray").await.expect("blob");
    env.age_all_blobs(2 * HOUR);
    let before = env.snapshot();

    let exec = Executor::dry_run();
    let report = blob_pass(&env.deps(HOUR), &exec).await.expect("pass");

    assert_eq!(env.snapshot(), before, "files, sizes and mtimes identical");
    let planned: BTreeSet<String> = exec
        .plan()
        .actions()
        .iter()
        .map(|a| a.target.clone())
        .collect();
    let expected: BTreeSet<String> = [&old.manifest, &old.config, &old.layers[0]]
        .iter()
        .map(|d| format!("blob/{d}"))
        .collect();
    assert!(expected.is_subset(&planned), "{planned:?}");
    assert_eq!(planned.len(), 4, "the stray blob too: {planned:?}");
    assert!(exec.plan().actions().iter().all(|a| a.bytes.is_some()));
    assert!(report.summary.dry_run);
    assert_eq!(report.summary.deleted, 4);
}

/// A store that rewrites a blob (as a concurrent upload of the same content would) the
/// first time the collector re-checks it.
struct RewrittenDuringPass {
    inner: ArtifactStore,
    fired: AtomicBool,
}

#[async_trait]
impl BlobStore for RewrittenDuringPass {
    async fn list_blob_entries(&self) -> Result<Vec<BlobEntry>, BoxError> {
        self.inner.list_blob_entries().await
    }
    async fn blob_modified(&self, digest: &BlobDigest) -> Result<Option<SystemTime>, BoxError> {
        if !self.fired.swap(true, Ordering::SeqCst) {
            let path = self.inner.root().join("blobs/sha256").join(digest.hex());
            set_age(&path, Duration::ZERO);
        }
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
}

#[tokio::test]
async fn a_blob_written_again_during_the_sweep_is_kept() {
    let env = Env::new().await;
    let blob = env
        .store
        .put_blob(b"re-uploaded while we sweep")
        .await
        .expect("blob");
    env.age_all_blobs(2 * HOUR);
    let store = Arc::new(RewrittenDuringPass {
        inner: env.store.clone(),
        fired: AtomicBool::new(false),
    });

    let report = blob_pass(&env.deps_with(store, HOUR, None), &Executor::real())
        .await
        .expect("pass");

    assert!(env.has_blob(&blob));
    assert_eq!(report.summary.deleted, 0);
    assert!(
        report
            .kept
            .iter()
            .any(|k| k.reason.contains("modified during the pass"))
    );
}

#[tokio::test]
async fn uploads_in_progress_are_never_touched() {
    let env = Env::new().await;
    let id = env.store.start_upload().await.expect("upload");
    let uploads = env.store.root().join("uploads");
    let before: Vec<_> = std::fs::read_dir(&uploads)
        .expect("dir")
        .map(|e| e.expect("e").path())
        .collect();

    blob_pass(&env.deps(Duration::ZERO), &Executor::real())
        .await
        .expect("pass");

    assert!(env.store.upload_info(id).await.expect("info").is_some());
    let after: Vec<_> = std::fs::read_dir(&uploads)
        .expect("dir")
        .map(|e| e.expect("e").path())
        .collect();
    assert_eq!(before, after);
}
