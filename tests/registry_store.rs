//! The artifact store's read APIs that blob GC relies on, and its on-disk hygiene.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use converge::registry::{ArtifactStore, ArtifactStoreError, Digest, Reference, RepoName, Tag};

fn chunks(parts: &[&'static [u8]]) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn blobs_are_listed_with_size_and_mtime_and_can_be_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(dir.path()).await.expect("open");
    let a = store.put_blob(b"alpha").await.expect("put");
    let b = store.put_blob(b"bravo!").await.expect("put");
    let listed = store.list_blobs().await.expect("list");
    assert_eq!(listed.len(), 2);
    let info_b = listed.iter().find(|i| i.digest == b).expect("b listed");
    assert_eq!(info_b.size, 6);
    assert!(info_b.modified <= SystemTime::now() + Duration::from_secs(1));
    assert!(store.delete_blob(&a).await.expect("delete"));
    assert!(!store.delete_blob(&a).await.expect("delete again"));
    assert!(store.blob_info(&a).await.expect("info").is_none());
    // No temp file is left next to the blobs.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1);
}

#[tokio::test]
async fn uploads_in_progress_are_listed_with_their_start_and_verified_on_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(dir.path()).await.expect("open");
    let id = store.start_upload().await.expect("start");
    let size = store
        .append_upload(id, Some(0), None, chunks(&[b"hel", b"lo"]))
        .await
        .expect("append");
    assert_eq!(size, 5);
    let uploads = store.list_uploads().await.expect("uploads");
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].size, 5);
    assert!(uploads[0].started <= SystemTime::now());

    let wrong = Digest::of(b"other");
    let err = store.finish_upload(id, &wrong).await.expect_err("mismatch");
    assert!(matches!(err, ArtifactStoreError::DigestMismatch { .. }));
    assert!(store.list_uploads().await.expect("uploads").is_empty());
    assert!(store.list_blobs().await.expect("blobs").is_empty());

    let id = store.start_upload().await.expect("start");
    let err = store
        .append_upload(id, Some(3), None, chunks(&[b"x"]))
        .await
        .expect_err("range");
    assert!(matches!(
        err,
        ArtifactStoreError::RangeInvalid {
            expected: 0,
            got: 3
        }
    ));
    store
        .append_upload(id, None, None, chunks(&[b"hello"]))
        .await
        .expect("append");
    let info = store
        .finish_upload(id, &Digest::of(b"hello"))
        .await
        .expect("finish");
    assert_eq!(info.size, 5);
}

#[tokio::test]
async fn repositories_tags_and_manifest_links_are_listed_for_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(dir.path()).await.expect("open");
    let m1 = store.put_blob(b"{\"schemaVersion\":2}").await.expect("put");
    let m2 = store
        .put_blob(b"{\"schemaVersion\":2,\"x\":1}")
        .await
        .expect("put");
    let app: RepoName = "team/app".parse().expect("name");
    let team: RepoName = "team".parse().expect("name");
    let v1: Tag = "v1".parse().expect("tag");
    store
        .link_manifest(&app, &m1, Some(&v1))
        .await
        .expect("link");
    store
        .link_manifest(&app, &m2, Some(&"v2".parse().expect("tag")))
        .await
        .expect("link");
    store.link_manifest(&team, &m2, None).await.expect("link");

    assert_eq!(
        store.list_repositories().await.expect("repos"),
        vec![team.clone(), app.clone()]
    );
    assert_eq!(
        store
            .repository_manifests(&app)
            .await
            .expect("manifests")
            .len(),
        2
    );
    let targets = store.tag_targets(&app).await.expect("targets");
    assert_eq!(
        targets,
        vec![
            (v1.clone(), m1.clone()),
            ("v2".parse().expect("tag"), m2.clone())
        ]
    );
    assert_eq!(
        store.read_manifest(&m1).await.expect("read").as_deref(),
        Some(&b"{\"schemaVersion\":2}"[..])
    );

    assert!(store.delete_manifest(&app, &m1).await.expect("delete"));
    assert_eq!(
        store
            .resolve(&app, &Reference::Tag(v1))
            .await
            .expect("resolve"),
        None
    );
    assert_eq!(
        store
            .resolve(&app, &Reference::Digest(m1.clone()))
            .await
            .expect("resolve"),
        None
    );
    // The blob stays for GC to decide.
    assert!(store.blob_info(&m1).await.expect("info").is_some());
}

#[tokio::test]
async fn reachability_follows_an_index_down_to_configs_and_layers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(dir.path()).await.expect("open");
    let config = store.put_blob(b"{}").await.expect("config");
    let layer = store.put_blob(b"layer").await.expect("layer");
    let foreign = Digest::of(b"foreign layer");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": config.as_str(), "size": 2},
        "layers": [
            {"digest": layer.as_str(), "size": 5},
            {"digest": foreign.as_str(), "size": 13, "urls": ["https://example.invalid/l"]}
        ]
    });
    let manifest = store
        .put_blob(&serde_json::to_vec(&manifest).expect("json"))
        .await
        .expect("manifest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"digest": manifest.as_str(), "size": 1}]
    });
    let index = store
        .put_blob(&serde_json::to_vec(&index).expect("json"))
        .await
        .expect("index");
    let unrelated = store.put_blob(b"unrelated").await.expect("unrelated");

    let reachable = store.reachable_from(&index).await.expect("reachable");
    let expected: std::collections::BTreeSet<Digest> =
        [index, manifest, config, layer].into_iter().collect();
    assert_eq!(reachable, expected);
    assert!(!reachable.contains(&unrelated));
    assert!(!reachable.contains(&foreign));

    let broken = store.put_blob(b"not json").await.expect("broken");
    assert!(matches!(
        store.reachable_from(&broken).await,
        Err(ArtifactStoreError::BadManifest { .. })
    ));
}
