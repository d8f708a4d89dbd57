//! Blob GC's batched sweep against a real on-disk artifact store: links and tags go with their manifest in every repository, blobs written while a batch runs are kept, sweeps larger than one batch finish, a fenced batch needs a live term.

mod blob_gc_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

use async_trait::async_trait;
use blob_gc_support::{Env, HOUR, set_age};
use converge::registry::names::{Reference, RepoName, Tag};
use converge::registry::store::{ArtifactStore, SweptBlob};
use converge::server::leader::{FencedBlobStore, Leadership, LocalLeadership};
use converge_reconcilers::blobs::{
    BlobDeleted, BlobDeletion, BlobDigest, BlobEntry, BlobStore, ReachError, SWEEP_BATCH, blob_pass,
};
use converge_reconcilers::engine::{BoxError, Executor};

fn repo(name: &str) -> RepoName {
    name.parse().expect("repo")
}

fn tag(name: &str) -> Tag {
    name.parse().expect("tag")
}

#[tokio::test]
async fn a_swept_manifest_takes_its_links_and_tags_in_every_repository_and_nothing_else() {
    let env = Env::new().await;
    let old = env.image("demo/old", &[b"layer-old"]).await;
    let live = env.image("demo/live", &[b"layer-live"]).await;
    // The archived manifest is also tagged elsewhere and linked by digest only in a third
    // repository; that repository also tags the live manifest.
    env.store
        .link_manifest(&repo("mirror/copy"), &old.manifest, Some(&tag("v2")))
        .await
        .expect("link");
    env.store
        .link_manifest(&repo("mirror/bydigest"), &old.manifest, None)
        .await
        .expect("link");
    env.store
        .link_manifest(&repo("mirror/bydigest"), &live.manifest, Some(&tag("live")))
        .await
        .expect("link");
    env.entities.artifact("old", old.manifest.as_str(), true);
    env.entities.artifact("live", live.manifest.as_str(), false);
    env.age_all_blobs(2 * HOUR);

    let report = blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    assert_eq!(report.summary.deleted, 3, "{report:#?}");
    assert!(!env.has_blob(&old.manifest));
    for r in ["demo/old", "mirror/copy"] {
        assert!(
            env.store
                .list_tags(&repo(r))
                .await
                .expect("tags")
                .is_empty(),
            "tags of {r}"
        );
    }
    for r in ["demo/old", "mirror/copy", "mirror/bydigest"] {
        let links = env
            .store
            .repository_manifests(&repo(r))
            .await
            .expect("links");
        assert!(!links.contains(&old.manifest), "link in {r}: {links:?}");
    }
    let live_tag = env
        .store
        .resolve(&repo("mirror/bydigest"), &Reference::Tag(tag("live")))
        .await
        .expect("resolve");
    assert_eq!(live_tag, Some(live.manifest.clone()), "the live tag stays");
    assert!(env.has_blob(&live.manifest) && env.has_blob(&live.layers[0]));
}

#[tokio::test]
async fn a_sweep_larger_than_one_batch_deletes_every_unreachable_blob() {
    let env = Env::new().await;
    let live = env.image("demo/live", &[b"layer-live"]).await;
    env.entities.artifact("live", live.manifest.as_str(), false);
    let strays = SWEEP_BATCH + SWEEP_BATCH / 2;
    let mut stray = Vec::with_capacity(strays);
    for i in 0..strays {
        let d = env
            .store
            .put_blob(format!("stray {i}").as_bytes())
            .await
            .expect("blob");
        stray.push(d);
    }
    env.age_all_blobs(2 * HOUR);

    let report = blob_pass(&env.deps(HOUR), &Executor::real())
        .await
        .expect("pass");

    assert_eq!(
        report.summary.deleted, strays as u64,
        "{:?}",
        report.problems
    );
    assert!(stray.iter().all(|d| !env.has_blob(d)));
    assert!(env.has_blob(&live.manifest) && env.has_blob(&live.config));
}

/// The real store, except that just before its batch deletion runs, one blob of the batch
/// is written again (as a concurrent upload of the same content would).
struct RewrittenBeforeTheBatch {
    inner: ArtifactStore,
    victim: BlobDigest,
    fired: AtomicBool,
}

#[async_trait]
impl BlobStore for RewrittenBeforeTheBatch {
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
        if !self.fired.swap(true, Ordering::SeqCst) {
            let path = self
                .inner
                .root()
                .join("blobs/sha256")
                .join(self.victim.hex());
            set_age(&path, Duration::ZERO);
        }
        self.inner.delete_blobs(batch).await
    }
}

#[tokio::test]
async fn a_manifest_written_again_after_the_recheck_keeps_its_file_but_the_others_go() {
    let env = Env::new().await;
    let old = env.image("demo/old", &[b"layer-old"]).await;
    env.entities.artifact("old", old.manifest.as_str(), true);
    env.age_all_blobs(2 * HOUR);
    let victim: BlobDigest = old.manifest.as_str().parse().expect("digest");
    let store = Arc::new(RewrittenBeforeTheBatch {
        inner: env.store.clone(),
        victim,
        fired: AtomicBool::new(false),
    });

    let report = blob_pass(&env.deps_with(store, HOUR, None), &Executor::real())
        .await
        .expect("pass");

    assert!(env.has_blob(&old.manifest), "the rewritten manifest stays");
    assert!(!env.has_blob(&old.config) && !env.has_blob(&old.layers[0]));
    assert_eq!(report.summary.deleted, 2, "{report:#?}");
    assert!(
        report
            .kept
            .iter()
            .any(|k| k.target == format!("blob/{}", old.manifest)
                && k.reason.contains("modified during the pass")),
        "{:?}",
        report.kept
    );
}

#[tokio::test]
async fn the_store_batch_leaves_a_blob_whose_mtime_changed_and_reports_blobs_already_gone() {
    let env = Env::new().await;
    let img = env.image("demo/x", &[b"layer-x"]).await;
    env.age_all_blobs(2 * HOUR);
    let stamp = |d: &converge::registry::names::Digest| {
        std::fs::metadata(env.blob_path(d))
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let seen_config = stamp(&img.config);
    let seen_manifest = stamp(&img.manifest);
    let seen_layer = stamp(&img.layers[0]);
    set_age(&env.blob_path(&img.config), Duration::ZERO);
    std::fs::remove_file(env.blob_path(&img.layers[0])).expect("remove");

    let outcomes = env
        .store
        .sweep_blobs(vec![
            (img.config.clone(), seen_config),
            (img.layers[0].clone(), seen_layer),
            (img.manifest.clone(), seen_manifest),
        ])
        .await
        .expect("batch");

    let outcomes: Vec<SweptBlob> = outcomes.into_iter().map(|o| o.expect("entry")).collect();
    assert_eq!(
        outcomes,
        [SweptBlob::Modified, SweptBlob::Gone, SweptBlob::Deleted]
    );
    assert!(env.has_blob(&img.config) && !env.has_blob(&img.manifest));
    assert!(
        env.store
            .list_tags(&repo("demo/x"))
            .await
            .expect("tags")
            .is_empty()
    );
}

#[tokio::test]
async fn a_fenced_batch_deletes_while_the_term_holds_and_nothing_once_it_is_lost() {
    let env = Env::new().await;
    let a = env.store.put_blob(b"garbage a").await.expect("blob");
    let b = env.store.put_blob(b"garbage b").await.expect("blob");
    env.age_all_blobs(2 * HOUR);
    let deletion = |d: &converge::registry::names::Digest| BlobDeletion {
        digest: d.as_str().parse().expect("digest"),
        modified: std::fs::metadata(env.blob_path(d))
            .and_then(|m| m.modified())
            .expect("mtime"),
    };
    let leadership = Arc::new(LocalLeadership::new("blob-gc").expect("leadership"));
    let term = leadership
        .campaign(&CancellationToken::new())
        .await
        .expect("elected");
    let fenced = FencedBlobStore::new(
        Arc::new(env.store.clone()),
        leadership.clone(),
        term.clone(),
    );

    let first = fenced.delete_blobs(&[deletion(&a)]).await;
    assert!(
        matches!(first.as_slice(), [Ok(BlobDeleted::Deleted)]),
        "{first:?}"
    );
    leadership.resign(&term).await;
    let second = fenced.delete_blobs(&[deletion(&b)]).await;

    assert!(matches!(second.as_slice(), [Err(_)]), "{second:?}");
    assert!(
        !env.has_blob(&a) && env.has_blob(&b),
        "nothing deleted after the term"
    );
}
