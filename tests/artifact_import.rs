//! `converge artifact import` / `archive` end to end: a real registry and a real entity
//! server in-process, an oci-archive and a `docker save` tar built here, and bad archives
//! that must leave both untouched.

mod registry_support;

use converge::artifact::{
    ArtifactError, ImportRequest, LayoutError, TarballError, archive_artifact, import_image,
};
use converge::registry::{ArtifactStore, Digest, Reference, RepoName};
use converge::server::{StoreUrl, listen, open_store, serve_bound};
use converge_testkit::busybox_image_layout;
use converge_watch::{EntityClient, EntityId, ServerAddress};
use registry_support::{RegistryServer, serve_registry};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A registry and an entity server, both private to one test.
struct Cluster {
    dir: tempfile::TempDir,
    registry_url: String,
    store: ArtifactStore,
    client: EntityClient,
    _registry: RegistryServer,
    _stop_server: oneshot::Sender<()>,
}

async fn start_cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(dir.path().join("artifacts"))
        .await
        .expect("store");
    let registry = serve_registry(store.clone()).await;

    let entities = open_store(&StoreUrl::Redb(dir.path().join("entities.redb")), 1000)
        .await
        .expect("entity store");
    let address = ServerAddress::Unix(dir.path().join("entity.sock"));
    let bound = listen::bind(&address).await.expect("bind entity socket");
    let (stop_server, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_bound(entities, bound, async move {
        let _ = stopped.await;
    }));
    let client = EntityClient::connect(&address).await.expect("connect");
    Cluster {
        dir,
        registry_url: registry.url.clone(),
        store,
        client,
        _registry: registry,
        _stop_server: stop_server,
    }
}

impl Cluster {
    fn request(&self, file: &std::path::Path, reference: &str) -> ImportRequest {
        ImportRequest::new(file.to_path_buf(), reference, None, &self.registry_url)
            .expect("request")
    }

    async fn tagged(&self, repo: &str, tag: &str) -> Option<Digest> {
        let repo: RepoName = repo.parse().expect("repo");
        self.store
            .resolve(&repo, &Reference::Tag(tag.parse().expect("tag")))
            .await
            .expect("resolve")
    }

    async fn assert_untouched(&self, id: &str) {
        let id: EntityId = id.parse().expect("id");
        assert!(
            self.client.get(&id).await.expect("get").is_none(),
            "{id} was created"
        );
        assert!(
            self.store
                .list_repositories()
                .await
                .expect("repos")
                .is_empty()
        );
    }
}

fn sha(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

fn append(tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes).expect("append");
}

/// A `docker save` style tar with one uncompressed layer holding `payload`.
fn docker_save_tar(repo_tag: &str, payload: &[u8]) -> (Vec<u8>, String, String) {
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, "data/payload.bin", payload);
    let layer = layer.into_inner().expect("layer");
    let layer_digest = sha(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .expect("config");
    let config_digest = sha(&config);
    let config_name = format!("{}.json", config_digest.trim_start_matches("sha256:"));
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": ["0123abcd/layer.tar"],
    }]))
    .expect("manifest");
    let mut out = tar::Builder::new(Vec::new());
    append(&mut out, &config_name, &config);
    append(&mut out, "0123abcd/layer.tar", &layer);
    append(&mut out, "manifest.json", &manifest);
    (out.into_inner().expect("tar"), config_digest, layer_digest)
}

#[tokio::test]
async fn oci_archive_import_pushes_the_image_and_records_an_active_artifact() {
    let c = start_cluster().await;
    let layout = busybox_image_layout(c.dir.path().join("layout")).expect("layout");
    let archive = c.dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("archive");

    let req = c.request(&archive, "cluster.local:5000/demo:v1");
    assert_eq!(req.id.to_string(), "artifact/demo-v1");
    let outcome = import_image(&c.client, &req).await.expect("import");
    assert_eq!(outcome.manifest.as_str(), layout.manifest.digest);
    assert_eq!(
        outcome.entity.spec,
        json!({"image": "cluster.local:5000/demo:v1", "manifest": layout.manifest.digest, "state": "active"})
    );
    assert_eq!(
        c.tagged("demo", "v1").await.map(|d| d.to_string()),
        Some(layout.manifest.digest.clone())
    );
    assert_eq!(outcome.push.pushed, 1 + layout.layers.len());

    // A second import of the same image finds every blob already there.
    let again = import_image(&c.client, &req).await.expect("re-import");
    assert_eq!(again.push.pushed, 0);
    assert_eq!(again.push.skipped, 1 + layout.layers.len());
}

#[tokio::test]
async fn docker_save_tar_is_converted_to_an_oci_manifest_and_pushed_in_chunks() {
    let c = start_cluster().await;
    // 9 MiB of non-repeating bytes: larger than one upload chunk.
    let payload: Vec<u8> = (0..9 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (tar_bytes, config_digest, layer_digest) = docker_save_tar("demo:v2", &payload);
    let file = c.dir.path().join("saved.tar");
    std::fs::write(&file, &tar_bytes).expect("write");

    let outcome = import_image(&c.client, &c.request(&file, "demo:v2"))
        .await
        .expect("import");
    assert_eq!(outcome.entity.id.to_string(), "artifact/demo-v2");
    let manifest = c
        .store
        .read_manifest(&outcome.manifest)
        .await
        .expect("read")
        .expect("stored");
    let manifest: Value = serde_json::from_slice(&manifest).expect("json");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(manifest["config"]["digest"], config_digest.as_str());
    assert_eq!(manifest["layers"][0]["digest"], layer_digest.as_str());
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    let layer = c
        .store
        .blob_info(&layer_digest.parse().expect("digest"))
        .await
        .expect("info")
        .expect("layer stored");
    assert!(layer.size > 9 * 1024 * 1024);
}

#[tokio::test]
async fn garbage_and_truncated_files_are_refused_and_nothing_is_created() {
    let c = start_cluster().await;
    let garbage = c.dir.path().join("garbage.tar");
    std::fs::write(
        &garbage,
        b"this is not a tar archive at all, just some text",
    )
    .expect("write");
    let err = import_image(&c.client, &c.request(&garbage, "demo:v1"))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ArtifactError::Tarball(_) | ArtifactError::Layout(_)),
        "unexpected {err:?}"
    );

    let (tar_bytes, _, _) = docker_save_tar("demo:v1", b"hello");
    let truncated = c.dir.path().join("truncated.tar");
    std::fs::write(&truncated, &tar_bytes[..1500]).expect("write");
    let err = import_image(&c.client, &c.request(&truncated, "demo:v1"))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ArtifactError::Tarball(_) | ArtifactError::Layout(_)),
        "unexpected {err:?}"
    );
    let gz = c.dir.path().join("compressed.tar");
    std::fs::write(&gz, [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0]).expect("write");
    let err = import_image(&c.client, &c.request(&gz, "demo:v1"))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ArtifactError::Tarball(TarballError::Compressed(_))),
        "{err:?}"
    );
    c.assert_untouched("artifact/demo-v1").await;
}

#[tokio::test]
async fn archive_whose_manifest_names_a_missing_or_altered_blob_is_refused() {
    let c = start_cluster().await;
    let layout = busybox_image_layout(c.dir.path().join("layout")).expect("layout");

    // Drop the layer blob from the archive.
    let layer = &layout.layers[0].blob.digest;
    let missing = c.dir.path().join("missing.tar");
    std::fs::remove_file(layout.blob_path(layer)).expect("remove layer");
    let mut tar = tar::Builder::new(std::fs::File::create(&missing).expect("create"));
    for name in ["oci-layout", "index.json"] {
        tar.append_path_with_name(layout.dir.join(name), name)
            .expect("append");
    }
    for blob in [&layout.manifest, &layout.config] {
        let hex = blob.digest.trim_start_matches("sha256:");
        tar.append_path_with_name(
            layout.blob_path(&blob.digest),
            format!("blobs/sha256/{hex}"),
        )
        .expect("append");
    }
    tar.finish().expect("finish");
    drop(tar);
    let err = import_image(&c.client, &c.request(&missing, "demo:v1"))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ArtifactError::Layout(LayoutError::MissingBlob { .. })),
        "{err:?}"
    );

    // Put different bytes under the layer's digest.
    std::fs::write(layout.blob_path(layer), b"not the layer").expect("write");
    let altered = c.dir.path().join("altered.tar");
    let err = match layout.to_oci_archive(&altered) {
        Ok(()) => import_image(&c.client, &c.request(&altered, "demo:v1"))
            .await
            .expect_err("refused"),
        Err(e) => panic!("archive: {e}"),
    };
    assert!(
        matches!(
            err,
            ArtifactError::Layout(
                LayoutError::DigestMismatch { .. } | LayoutError::SizeMismatch { .. }
            )
        ),
        "{err:?}"
    );
    c.assert_untouched("artifact/demo-v1").await;
}

#[tokio::test]
async fn archiving_marks_the_artifact_archived_and_is_idempotent() {
    let c = start_cluster().await;
    let (tar_bytes, _, _) = docker_save_tar("demo:v3", b"small layer");
    let file = c.dir.path().join("saved.tar");
    std::fs::write(&file, &tar_bytes).expect("write");
    let outcome = import_image(&c.client, &c.request(&file, "demo:v3"))
        .await
        .expect("import");

    let archived = archive_artifact(&c.client, &outcome.entity.id)
        .await
        .expect("archive");
    assert_eq!(archived.spec["state"], "archived");
    assert_eq!(archived.spec["manifest"], outcome.manifest.as_str());
    assert!(archived.revision > outcome.entity.revision);
    let again = archive_artifact(&c.client, &outcome.entity.id)
        .await
        .expect("archive again");
    assert_eq!(again.revision, archived.revision);

    let unknown: EntityId = "artifact/nope".parse().expect("id");
    assert!(matches!(
        archive_artifact(&c.client, &unknown).await,
        Err(ArtifactError::NotFound(_))
    ));
}

#[tokio::test]
async fn references_to_other_registries_are_refused_before_reading_anything() {
    let err = ImportRequest::new(
        "x.tar".into(),
        "docker.io/library/busybox:1",
        None,
        "http://127.0.0.1:1",
    )
    .expect_err("refused");
    assert!(matches!(err, ArtifactError::Reference(_)), "{err:?}");
}
