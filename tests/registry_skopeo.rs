//! A real client against the registry: `skopeo copy` pushes a busybox oci-archive and
//! `skopeo inspect` reads it back.

mod registry_support;

use converge::registry::ArtifactStore;
use converge_testkit::busybox_image_layout;
use registry_support::{serve_registry, skopeo};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_an_oci_archive_and_inspects_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = busybox_image_layout(dir.path().join("layout")).expect("busybox layout");
    let archive = dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("oci archive");

    let store = ArtifactStore::open(dir.path().join("artifacts"))
        .await
        .expect("store");
    let registry = serve_registry(store.clone()).await;
    let addr = registry.addr;

    let dest = format!("docker://{addr}/demo/busybox:v1");
    let src = format!("oci-archive:{}", archive.display());
    let (ok, _, err) = skopeo(
        &["copy", "--dest-tls-verify=false", &src, &dest],
        dir.path(),
    )
    .await;
    assert!(ok, "skopeo copy failed: {err}");

    let (ok, out, err) = skopeo(&["inspect", "--tls-verify=false", &dest], dir.path()).await;
    assert!(ok, "skopeo inspect failed: {err}");
    let info: Value = serde_json::from_str(&out).expect("inspect json");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(
        info["Layers"].as_array().map(Vec::len),
        Some(layout.layers.len())
    );

    let (ok, out, err) = skopeo(
        &["inspect", "--raw", "--tls-verify=false", &dest],
        dir.path(),
    )
    .await;
    assert!(ok, "skopeo inspect --raw failed: {err}");
    let manifest: Value = serde_json::from_str(&out).expect("manifest json");
    assert_eq!(manifest["config"]["digest"], layout.config.digest.as_str());

    let tags = store
        .list_tags(&"demo/busybox".parse().expect("name"))
        .await
        .expect("tags");
    assert_eq!(tags.len(), 1);
    registry.stop().await.expect("serve");
}
