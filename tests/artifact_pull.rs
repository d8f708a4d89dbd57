//! Pulling from the artifact registry into a private containerd: an image pushed with the
//! importer becomes an image record with unpacked layers; pulls are idempotent, collapse
//! when concurrent, and report missing or corrupt content as typed errors.

mod registry_support;

use std::sync::Arc;
use std::time::Duration;

use converge::artifact::{ImportRequest, push_image};
use converge::registry::{ArtifactStore, Digest};
use converge_reconcilers::artifacts::{ImagePuller, PullError};
use converge_reconcilers::containerd::{ContainerdClient, SnapshotKind};
use converge_testkit::{ImageLayout, PrivateContainerd, busybox_image_layout, unique_name};
use registry_support::{RegistryServer, serve_registry};

struct Env {
    registry_url: String,
    store: ArtifactStore,
    layout: ImageLayout,
    archive: std::path::PathBuf,
    client: ContainerdClient,
    _registry: RegistryServer,
    // Dropped last: tears containerd down.
    ctrd: PrivateContainerd,
}

async fn start() -> Env {
    let ctrd = PrivateContainerd::start()
        .await
        .expect("private containerd");
    let client = ContainerdClient::new(ctrd.socket(), &unique_name("pull")).expect("client");
    client
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("containerd ready");
    let store = ArtifactStore::open(ctrd.dir().join("artifacts"))
        .await
        .expect("store");
    let registry = serve_registry(store.clone()).await;
    let layout = busybox_image_layout(ctrd.dir().join("layout")).expect("layout");
    let archive = ctrd.dir().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("archive");
    Env {
        registry_url: registry.url.clone(),
        store,
        layout,
        archive,
        client,
        _registry: registry,
        ctrd,
    }
}

impl Env {
    async fn push(&self, reference: &str) -> Digest {
        let req = ImportRequest::new(self.archive.clone(), reference, None, &self.registry_url)
            .expect("request");
        push_image(&req).await.expect("push").0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_image_is_recorded_unpacked_and_not_fetched_again() {
    let env = start().await;
    let manifest = env.push("demo:v1").await;
    let puller = ImagePuller::new(&env.registry_url).expect("puller");
    let image = "cluster.local:5000/demo:v1";

    let first = puller.pull(&env.client, image).await.expect("pull");
    assert!(first.fetched);
    assert_eq!(first.record.name, image);
    assert_eq!(first.record.target.digest, manifest.as_str());
    let resolved = env.client.resolve_image(image).await.expect("resolve");
    let top = env
        .client
        .stat_snapshot(resolved.top_chain_id())
        .await
        .expect("stat")
        .expect("top snapshot");
    assert_eq!(top.kind, SnapshotKind::Committed);
    let info = env
        .client
        .content_info(&env.layout.manifest.digest)
        .await
        .expect("info")
        .expect("manifest in content store");
    assert_eq!(
        info.labels.get("containerd.io/gc.ref.content.config"),
        Some(&env.layout.config.digest)
    );
    assert!(env.client.list_leases().await.expect("leases").is_empty());

    let second = puller.pull(&env.client, image).await.expect("pull again");
    assert!(
        !second.fetched,
        "an image already present is not fetched again"
    );

    // By digest, too.
    let by_digest = format!("cluster.local:5000/demo@{manifest}");
    let pinned = puller
        .pull(&env.client, &by_digest)
        .await
        .expect("pull by digest");
    assert_eq!(pinned.record.target.digest, manifest.as_str());
    env.ctrd.stop().await.expect("stop containerd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_fetch_it_once() {
    let env = start().await;
    env.push("team/app:v2").await;
    let puller = Arc::new(ImagePuller::new(&env.registry_url).expect("puller"));
    let client = Arc::new(env.client.clone());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (puller, client) = (puller.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            puller.pull(&client, "cluster.local:5000/team/app:v2").await
        }));
    }
    let mut fetched = 0;
    for task in tasks {
        if task.await.expect("join").expect("pull").fetched {
            fetched += 1;
        }
    }
    assert_eq!(fetched, 1);
    assert_eq!(puller.fetch_count(), 1);
    env.ctrd.stop().await.expect("stop containerd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_corrupt_blobs_are_typed_errors_and_leave_no_record() {
    let env = start().await;
    let puller = ImagePuller::new(&env.registry_url).expect("puller");
    let err = puller
        .pull(&env.client, "cluster.local:5000/nothing:v1")
        .await
        .expect_err("missing");
    assert!(matches!(err, PullError::NotFound(_)), "{err:?}");

    env.push("demo:v1").await;
    // Corrupt the layer inside the registry's store (same length, different bytes).
    let layer = &env.layout.layers[0].blob;
    let hex = layer.digest.trim_start_matches("sha256:");
    let path = env.store.root().join("blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&path).expect("read layer");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt layer");

    let err = puller
        .pull(&env.client, "cluster.local:5000/demo:v1")
        .await
        .expect_err("corrupt");
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err:?}");
    assert!(
        env.client
            .get_image("cluster.local:5000/demo:v1")
            .await
            .expect("get")
            .is_none()
    );
    env.ctrd.stop().await.expect("stop containerd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_v2_manifests_pushed_by_skopeo_are_pulled_too() {
    let env = start().await;
    let addr = env.registry_url.trim_start_matches("http://");
    let out = tokio::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci-archive:{}", env.archive.display()))
        .arg(format!("docker://{addr}/dockerfmt:v1"))
        .env("TMPDIR", env.ctrd.dir())
        .env("REGISTRY_AUTH_FILE", env.ctrd.dir().join("auth.json"))
        .output()
        .await
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let puller = ImagePuller::new(&env.registry_url).expect("puller");
    let pulled = puller
        .pull(&env.client, "cluster.local:5000/dockerfmt:v1")
        .await
        .expect("pull");
    assert_eq!(
        pulled.record.target.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let resolved = env
        .client
        .resolve_image("cluster.local:5000/dockerfmt:v1")
        .await
        .expect("resolve");
    assert!(!resolved.top_chain_id().is_empty());
    env.ctrd.stop().await.expect("stop containerd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_already_in_the_content_store_are_not_fetched_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::Request;
    use axum::middleware::Next;

    let env = start().await;
    // A second registry over the same store that counts GETs of the layer blob.
    let layer_path = format!("/blobs/{}", env.layout.layers[0].blob.digest);
    let layer_gets = Arc::new(AtomicUsize::new(0));
    let counter = layer_gets.clone();
    let app = converge::registry::registry_router(env.store.clone()).layer(
        axum::middleware::from_fn(move |req: Request, next: Next| {
            let counter = counter.clone();
            let layer_path = layer_path.clone();
            async move {
                if req.method() == axum::http::Method::GET
                    && req.uri().path().ends_with(&layer_path)
                {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                next.run(req).await
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let counting_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    env.push("demo:v1").await;
    // The same layer arrives in containerd through another image first.
    converge_reconcilers::containerd::import_oci_layout(
        &env.client,
        &env.layout.dir,
        "test.local/other:v1",
    )
    .await
    .expect("import layout");
    let puller = ImagePuller::new(&counting_url).expect("puller");
    let pulled = puller
        .pull(&env.client, "cluster.local:5000/demo:v1")
        .await
        .expect("pull");
    assert!(pulled.fetched);
    assert_eq!(
        layer_gets.load(Ordering::SeqCst),
        0,
        "layer fetched although containerd had it"
    );
    env.ctrd.stop().await.expect("stop containerd");
}
