//! Blob GC over a synthetic artifact store: 1,000 images (manifest + config + 8 layers = 10,000 blobs, all past the grace), 1,000 artifacts, half archived.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use converge::registry::ArtifactStore;
use converge_reconcilers::blobs::{BlobGcConfig, BlobGcDeps, BlobStore, blob_pass};
use converge_reconcilers::engine::Executor;
use converge_reconcilers::gc_report::EntitySource;
use converge_watch::EntityId;
use converge_watch::client::PutSpec;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::bench_support::BenchError;
use crate::{BenchServer, describe, measure, measure_repeated, print_sweep};

/// Images (and artifacts) in the store.
const IMAGES: usize = 1000;
/// Layers per image.
const LAYERS: usize = 8;
/// Longest the real sweep may run before the bench stops it and reports its rate.
const SWEEP_LIMIT: Duration = Duration::from_secs(60);
/// Age given to every blob (past the 1 h grace).
const AGE: Duration = Duration::from_secs(2 * 3600);

/// Builds the store and the artifacts, then measures listing, plan and sweep.
pub async fn run() -> Result<(), BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("converge-bench-blobs-")
        .tempdir()?;
    let root = dir.path().join("artifacts");
    let store = ArtifactStore::open(&root).await?;
    let server = BenchServer::start("converge-bench-gc-").await?;
    let built = Instant::now();
    let root_for_build = root.clone();
    let (manifests, bytes) =
        tokio::task::spawn_blocking(move || build_store(&root_for_build)).await??;
    let puts = manifests
        .iter()
        .enumerate()
        .map(|(i, manifest)| -> Result<PutSpec, BenchError> {
            let state = if i % 2 == 0 { "archived" } else { "active" };
            Ok(PutSpec {
                id: format!("artifact/app-{i}").parse::<EntityId>()?,
                spec: json!({"image": format!("cluster.local:5000/bench/app-{i}:v1"),
                             "manifest": manifest, "state": state}),
                expected_revision: None,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    server.put_all(puts).await?;
    println!(
        "--- blobs: {} blobs ({IMAGES} manifests, {IMAGES} configs, {} layers of 1-4 KiB; {:.1} MiB), \
         {IMAGES} artifacts (every other one archived), each manifest linked and tagged in its \
         repository; all blobs 2 h old (grace 1 h); no images-in-use source (as in `converge \
         server`); built in {:.1}s ---",
        IMAGES * (LAYERS + 2),
        IMAGES * LAYERS,
        crate::bench_support::resources::mib(bytes),
        built.elapsed().as_secs_f64()
    );

    let blob_dir = root.join("blobs/sha256");
    let (listing, files) = measure_repeated("baseline: walk + stat of blobs/sha256", || {
        let blob_dir = blob_dir.clone();
        async move { tokio::task::spawn_blocking(move || walk_and_stat(&blob_dir)).await? }
    })
    .await?;
    let (_, parsed) = measure_repeated("baseline: + read and parse every manifest", || {
        let blob_dir = blob_dir.clone();
        let manifests = manifests.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                walk_and_stat(&blob_dir)?;
                read_manifests(&blob_dir, &manifests)
            })
            .await?
        }
    })
    .await?;
    println!("(listing saw {files} files, parsed {parsed} manifests)");

    let deps = BlobGcDeps {
        store: Arc::new(store) as Arc<dyn BlobStore>,
        entities: Arc::new(server.client.clone()) as Arc<dyn EntitySource>,
        in_use: None,
        config: BlobGcConfig::default(),
    };
    let (plan, report) = measure_repeated("plan (dry-run blob pass)", || async {
        Ok(blob_pass(&deps, &Executor::dry_run()).await?)
    })
    .await?;
    println!("{:<40} {}", "", describe(&report));
    let planned = report.plan.len();
    let scratch = dir.path().join("unlink-baseline");
    let unlink = tokio::task::spawn_blocking(move || unlink_baseline(&scratch, planned)).await??;
    println!(
        "{:<40} took {:>9.3}ms (files written first, not timed)",
        format!("baseline: unlink {planned} files + fsync"),
        unlink.as_secs_f64() * 1000.0
    );
    let before = walk_and_stat(&blob_dir)?;
    let started = Instant::now();
    let real = tokio::time::timeout(SWEEP_LIMIT, async {
        measure(async { Ok(blob_pass(&deps, &Executor::real()).await?) }).await
    })
    .await;
    match real {
        Ok(sweep) => {
            let sweep = sweep?;
            print_sweep(&sweep, &plan, &listing);
            println!(
                "sweep: {:.0} blobs/s; sweep / unlink baseline: {:.2}x (+{:.1}ms)",
                sweep.value.summary.deleted as f64 / sweep.took.as_secs_f64(),
                sweep.took.as_secs_f64() / unlink.as_secs_f64(),
                (sweep.took.as_secs_f64() - unlink.as_secs_f64()) * 1000.0
            );
        }
        Err(_) => {
            // Dropping the pass between deletions is safe: links go before their blob.
            let deleted = before.saturating_sub(walk_and_stat(&blob_dir)?);
            let rate = deleted as f64 / started.elapsed().as_secs_f64();
            println!(
                "{:<40} stopped after {:.1}s (bench limit): {deleted} of {} planned blobs deleted, \
                 {rate:.1} blobs/s; all {} would take ~{:.0}s at that rate",
                "sweep (one real pass)",
                started.elapsed().as_secs_f64(),
                report.plan.len(),
                report.plan.len(),
                report.plan.len() as f64 / rate.max(0.001)
            );
            println!(
                "plan p50 / listing baseline p50: {:.2}x (+{:.1}ms)",
                plan.p50.as_secs_f64() / listing.p50.as_secs_f64(),
                (plan.p50.as_secs_f64() - listing.p50.as_secs_f64()) * 1000.0
            );
        }
    }
    let left = walk_and_stat(&blob_dir)?;
    println!("blobs left after the sweep: {left}");
    server.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// Writes every blob (mtime [`AGE`] ago) and the repository links; returns the manifest
/// digests, image by image, and the bytes written.
fn build_store(root: &Path) -> Result<(Vec<String>, u64), BenchError> {
    let blobs = root.join("blobs/sha256");
    let old = SystemTime::now() - AGE;
    let mut total = 0u64;
    let mut write = |bytes: &[u8]| -> Result<(String, u64), BenchError> {
        let hex = hex::encode(Sha256::digest(bytes));
        let file = std::fs::File::create(blobs.join(&hex))?;
        std::io::Write::write_all(&mut &file, bytes)?;
        file.set_modified(old)?;
        total += bytes.len() as u64;
        Ok((format!("sha256:{hex}"), bytes.len() as u64))
    };
    let mut manifests = Vec::with_capacity(IMAGES);
    for i in 0..IMAGES {
        let mut layers = Vec::with_capacity(LAYERS);
        for l in 0..LAYERS {
            let size = 1024 + (i * 31 + l * 517) % 3072;
            let mut bytes = format!("layer {i}/{l} ").into_bytes();
            bytes.resize(size, (i + l) as u8);
            let (digest, size) = write(&bytes)?;
            layers.push(
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": digest, "size": size}),
            );
        }
        let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
            "config": {"Env": [format!("N={i}")]}, "rootfs": {"type": "layers", "diff_ids": []}}))?;
        let (config_digest, config_size) = write(&config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": layers,
        }))?;
        let (digest, _) = write(&manifest)?;
        let repo = root.join(format!("repositories/bench/app-{i}"));
        std::fs::create_dir_all(repo.join("_manifests"))?;
        std::fs::create_dir_all(repo.join("_tags"))?;
        std::fs::write(repo.join("_manifests").join(&digest[7..]), b"")?;
        std::fs::write(repo.join("_tags/v1"), digest.as_bytes())?;
        manifests.push(digest);
    }
    Ok((manifests, total))
}

/// Writes `n` files of 2 KiB into `dir` (not timed), then times removing them all and one
/// fsync of `dir`: the least any sweep of `n` blobs does.
fn unlink_baseline(dir: &Path, n: usize) -> Result<Duration, BenchError> {
    std::fs::create_dir_all(dir)?;
    let files: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("{i:064x}"))).collect();
    for f in &files {
        std::fs::write(f, [7u8; 2048])?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    let started = Instant::now();
    for f in &files {
        std::fs::remove_file(f)?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(started.elapsed())
}

/// Lists `dir` and stats every entry (without following links); returns the count.
fn walk_and_stat(dir: &Path) -> Result<usize, BenchError> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.is_file() && meta.modified()? <= SystemTime::now() {
            n += 1;
        }
    }
    Ok(n)
}

/// Reads and parses every manifest of `digests`; returns how many parsed.
fn read_manifests(dir: &Path, digests: &[String]) -> Result<usize, BenchError> {
    let mut n = 0;
    for d in digests {
        let path: PathBuf = dir.join(&d[7..]);
        let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
        if value["layers"].is_array() {
            n += 1;
        }
    }
    Ok(n)
}
