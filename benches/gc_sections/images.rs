//! Image GC over 500 real image records in a private containerd: each its own manifest and config over the shared busybox layer, imported through the real import path; 250 with archived artifacts (25 of those used by a container), 200 active, 50 unknown.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use converge_reconcilers::containerd::{
    ContainerRequest, ContainerdClient, Descriptor, LayoutBlobSource, RuntimeSpecInput,
    build_runtime_spec, container_id, container_labels, import_image, import_oci_layout,
};
use converge_reconcilers::engine::Executor;
use converge_reconcilers::gc_report::EntitySource;
use converge_reconcilers::images::{ImageGcConfig, ImageGcDeps, StatvfsDisk, image_pass};
use converge_testkit::{ImageLayout, PrivateContainerd, busybox_image_layout, unique_name};
use converge_watch::client::PutSpec;
use converge_watch::spec::ContainerSpec;
use converge_watch::{EntityId, Kind};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::bench_support::BenchError;
use crate::{BenchServer, describe, measure, measure_repeated, print_sweep};

/// Image records.
const IMAGES: usize = 500;
/// Images 0..ARCHIVED have an archived artifact.
const ARCHIVED: usize = 250;
/// Images ARCHIVED..ACTIVE_END have an active one; the rest none.
const ACTIVE_END: usize = 450;
/// Images 0..IN_USE (archived ones) are used by a container (record, no task).
const IN_USE: usize = 25;
/// Concurrent imports while building.
const IMPORTS_AT_ONCE: usize = 4;

/// The name of image `i`.
fn image_name(i: usize) -> String {
    format!("cluster.local:5000/bench/img-{i}:v1")
}

/// Builds the images, artifacts and containers, then measures listing, plan and sweep.
pub async fn run() -> Result<(), BenchError> {
    let ctrd = PrivateContainerd::start().await?;
    let client = ContainerdClient::new(ctrd.socket(), &unique_name("gcimg"))?
        .with_runc_root(ctrd.runc_root());
    client.wait_ready(Duration::from_secs(10)).await?;
    let layout = busybox_image_layout(ctrd.dir().join("layout"))?;
    import_oci_layout(&client, &layout.dir, "bench.local/busybox:latest").await?;
    let server = BenchServer::start("converge-bench-gc-").await?;

    let built = Instant::now();
    let roots = variants(&layout)?;
    let source = LayoutBlobSource::new(&layout.dir);
    futures::stream::iter(roots.iter().enumerate())
        .map(|(i, root)| {
            let (client, source) = (&client, &source);
            async move { import_image(client, source, root, &image_name(i), HashMap::new()).await }
        })
        .buffer_unordered(IMPORTS_AT_ONCE)
        .try_collect::<Vec<_>>()
        .await?;
    let puts = (0..ACTIVE_END)
        .map(|i| -> Result<PutSpec, BenchError> {
            let state = if i < ARCHIVED { "archived" } else { "active" };
            Ok(PutSpec {
                id: EntityId::new(Kind::Artifact, format!("img-{i}"))?,
                spec: json!({"image": image_name(i), "manifest": roots[i].digest, "state": state}),
                expected_revision: None,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    server.put_all(puts).await?;
    for i in 0..IN_USE {
        create_container(&client, &image_name(i), &format!("user-{i}"), "app").await?;
    }
    println!(
        "--- images: {IMAGES} image records (own manifest + config each, one shared busybox \
         layer), imported with import_image ({IMPORTS_AT_ONCE} at a time); artifacts: \
         {ARCHIVED} archived, {} active, {} images without one; {IN_USE} archived images used \
         by a container (record, no task); default ImageGcConfig, disk read with statvfs; \
         built in {:.1}s ---",
        ACTIVE_END - ARCHIVED,
        IMAGES - ACTIVE_END,
        built.elapsed().as_secs_f64()
    );

    let (listing, _) = measure_repeated("baseline: ListImages", || async {
        Ok(client.list_images(&[]).await?.len())
    })
    .await?;
    measure_repeated("baseline: ListImages + ListContainers", || async {
        Ok(client.list_images(&[]).await?.len() + client.list_containers(&[]).await?.len())
    })
    .await?;
    let deps = ImageGcDeps {
        client: client.clone(),
        entities: Arc::new(server.client.clone()) as Arc<dyn EntitySource>,
        disk: Arc::new(StatvfsDisk::new(ctrd.dir().to_path_buf())),
        config: ImageGcConfig::default(),
    };
    let (plan, report) = measure_repeated("plan (dry-run image pass)", || async {
        Ok(image_pass(&deps, &Executor::dry_run()).await?)
    })
    .await?;
    println!("{:<40} {}", "", describe(&report));
    let sweep = measure(async { Ok(image_pass(&deps, &Executor::real()).await?) }).await?;
    print_sweep(&sweep, &plan, &listing);
    println!(
        "images left after the sweep: {}",
        client.list_images(&[]).await?.len()
    );
    server.stop(Duration::from_secs(10)).await;
    drop(ctrd);
    Ok(())
}

/// Writes [`IMAGES`] variants of the layout's image into its blob dir: the config with an
/// `author` of its own, and a manifest pointing at it; returns the manifests' descriptors.
fn variants(layout: &ImageLayout) -> Result<Vec<Descriptor>, BenchError> {
    let blobs = layout.dir.join("blobs/sha256");
    let read = |digest: &str| std::fs::read(blobs.join(&digest[7..]));
    let config: serde_json::Value = serde_json::from_slice(&read(&layout.config.digest)?)?;
    let manifest: serde_json::Value = serde_json::from_slice(&read(&layout.manifest.digest)?)?;
    (0..IMAGES)
        .map(|i| {
            let mut config = config.clone();
            config["author"] = json!(format!("bench-{i}"));
            let config_bytes = serde_json::to_vec(&config)?;
            let config_digest = write(&blobs, &config_bytes)?;
            let mut manifest = manifest.clone();
            manifest["config"]["digest"] = json!(config_digest);
            manifest["config"]["size"] = json!(config_bytes.len());
            let bytes = serde_json::to_vec(&manifest)?;
            Ok(Descriptor {
                media_type: layout.manifest.media_type.clone(),
                digest: write(&blobs, &bytes)?,
                size: bytes.len() as u64,
            })
        })
        .collect()
}

/// Writes `bytes` as a blob of `dir`; returns its digest.
fn write(dir: &Path, bytes: &[u8]) -> Result<String, BenchError> {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(dir.join(&hex), bytes)?;
    Ok(format!("sha256:{hex}"))
}

/// Creates (does not start) container `name` of image `image` owned by sandbox `owner`:
/// its record and rootfs snapshot, as the sandbox reconciler would before starting a task.
pub async fn create_container(
    client: &ContainerdClient,
    image: &str,
    owner: &str,
    name: &str,
) -> Result<String, BenchError> {
    let resolved = client.resolve_image(image).await?;
    let owner = EntityId::new(Kind::Sandbox, owner)?;
    let container = ContainerSpec {
        name: name.into(),
        image: image.into(),
        command: vec!["sleep".into(), "300".into()],
        ..Default::default()
    };
    let id = container_id(&owner, &container.name);
    let spec = build_runtime_spec(&RuntimeSpecInput {
        container_id: &id,
        namespace: client.namespace(),
        hostname: owner.name(),
        image: &resolved.config,
        container: &container,
        netns: None,
        extra_mounts: Vec::new(),
    })?;
    client
        .create_container(&ContainerRequest {
            id: &id,
            image,
            parent_snapshot: resolved.top_chain_id(),
            spec: &spec,
            labels: container_labels(&owner, &container.name, 1),
        })
        .await?;
    Ok(id)
}
