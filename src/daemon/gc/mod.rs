//! The GC reconcilers (orphans, images, blobs) wired as engine controllers for the daemon, and the `<data-dir>/gc-last-pass.json` record `converge describe node` reads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use converge_reconcilers::blobs::{
    BlobCollector, BlobGcConfig, BlobGcDeps, BlobReconciler, BlobStore, ManifestsInUse,
    blob_gc_keys,
};
use converge_reconcilers::containerd::ContainerdClient;
use converge_reconcilers::engine::{
    Controller, ControllerConfig, EngineMetrics, Executor, QueueConfig, RunnerConfig, Shutdown,
    WriteTracker,
};
use converge_reconcilers::gc_report::{EntitySource, GcKind, GcMetrics, LastPassBoard};
use converge_reconcilers::images::{
    ImageCollector, ImageGcConfig, ImageReconciler, StatvfsDisk, image_gc_keys,
};
use converge_reconcilers::orphans::{
    OrphanCollector, OrphanConfig, OrphanNetworkConfig, OrphanReconciler, forward_containerd_events,
};
use converge_watch::Kind;
use converge_watch::client::{EntityClient, ListFilter};
use converge_watch::stream::{StreamConfig, watch_stream};

use super::flags::DaemonConfig;
use crate::registry::ArtifactStore;

mod record;

pub use record::{
    GcRecordError, LAST_PASS_FILE, LastPassFile, NodeGcRecord, Publishing, last_pass_path,
    read_last_passes,
};

/// How often image GC checks for disk pressure.
pub const PRESSURE_INTERVAL: Duration = Duration::from_secs(60);

/// The settings of the orphan collector from the daemon's.
pub fn orphan_config(config: &DaemonConfig) -> OrphanConfig {
    OrphanConfig {
        node_id: config.node_id.clone(),
        orphan_grace: config.collectors.orphan_grace,
        stop_grace: config.stop_grace,
    }
}

/// The orphan collector, sweeping leaked sandbox networks too when networking is on
/// (`config.network`, allocations under `config.data_dir`).
pub fn orphan_collector(
    config: &DaemonConfig,
    containerd: &ContainerdClient,
    entities: Arc<dyn EntitySource>,
) -> OrphanCollector {
    let collector = OrphanCollector::new(containerd.clone(), entities, orphan_config(config));
    match &config.network {
        Some(network) => collector.with_network(OrphanNetworkConfig {
            network: network.clone(),
            data_dir: config.data_dir.clone(),
        }),
        None => collector,
    }
}

/// The settings of image GC from the daemon's.
pub fn image_config(config: &DaemonConfig) -> ImageGcConfig {
    ImageGcConfig {
        disk_high: f64::from(config.collectors.disk_high),
        disk_low: f64::from(config.collectors.disk_low),
        gc_interval: config.collectors.gc_interval,
        pressure_interval: PRESSURE_INTERVAL,
        ..ImageGcConfig::default()
    }
}

/// The settings of blob GC from the daemon's.
pub fn blob_config(config: &DaemonConfig) -> BlobGcConfig {
    BlobGcConfig {
        blob_grace: config.collectors.blob_grace,
    }
}

/// A controller ready to run until its shutdown is requested.
pub type GcRun = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the GC controllers share with the daemon.
#[derive(Debug, Clone)]
pub struct GcShared {
    /// Real or dry-run, as the sandbox controller.
    pub executor: Executor,
    /// The engine metrics registered on the daemon's registry.
    pub engine: Option<EngineMetrics>,
    /// The GC metrics registered on the same registry.
    pub gc: GcMetrics,
    /// Where each pass's summary goes.
    pub board: LastPassBoard,
    /// Where the board is published.
    pub file: LastPassFile,
}

impl GcShared {
    fn publishing<R>(&self, inner: R) -> Publishing<R> {
        Publishing::new(inner, self.board.clone(), self.file.clone())
    }

    fn controller_config(&self) -> ControllerConfig {
        ControllerConfig {
            queue: QueueConfig::default(),
            runner: RunnerConfig {
                workers: 1,
                timeout: None,
            },
            resync: None,
            executor: self.executor.clone(),
            metrics: self.engine.clone(),
            tracker: Arc::new(WriteTracker::default()),
        }
    }
}

fn artifact_events(
    client: &EntityClient,
) -> impl futures::Stream<Item = converge_watch::StreamEvent> + Send + 'static {
    watch_stream(
        client.clone(),
        ListFilter {
            kind: Some(Kind::Artifact),
            ..ListFilter::default()
        },
        StreamConfig::default(),
    )
}

/// Builds the orphan and image controllers (and the blob controller when `artifacts` is
/// given): orphans every `--resync` and on containerd deletions and exits; images every
/// `--gc-interval`, every minute for disk pressure and when an artifact is archived or
/// deleted; blobs every `--gc-interval` and on the same artifact events. Each also runs one
/// pass right away. Returns the controllers' run futures, to be driven with one
/// [`Shutdown`]; never fails (errors of a pass are retried by the engine and reported).
pub fn gc_controllers(
    config: &DaemonConfig,
    containerd: &ContainerdClient,
    client: &EntityClient,
    artifacts: Option<ArtifactStore>,
    shared: &GcShared,
    shutdown: &Shutdown,
) -> Vec<GcRun> {
    let entities: Arc<dyn EntitySource> = Arc::new(client.clone());
    let mut runs: Vec<GcRun> = Vec::new();

    let r = shared.publishing(OrphanReconciler::new(
        orphan_collector(config, containerd, entities.clone()),
        Some(shared.gc.clone()),
        shared.board.clone(),
    ));
    let orphans = Controller::new(r, shared.controller_config()).periodic(
        "resync",
        config.resync,
        GcKind::Orphans,
    );
    let trigger = orphans.trigger();
    if trigger.trigger(GcKind::Orphans).is_err() {
        tracing::warn!("cannot enqueue the first orphan pass");
    }
    let events = containerd.subscribe();
    let forward = tokio::spawn(forward_containerd_events(events, trigger));
    let stop = shutdown.clone();
    runs.push(Box::pin(async move {
        orphans.run(stop).await;
        forward.abort();
    }));

    let image_cfg = image_config(config);
    let disk = Arc::new(StatvfsDisk::new(config.containerd_root.clone()));
    let r = shared.publishing(ImageReconciler::new(
        ImageCollector::new(
            containerd.clone(),
            entities.clone(),
            disk,
            image_cfg.clone(),
        ),
        Some(shared.gc.clone()),
        shared.board.clone(),
    ));
    let images = Controller::new(r, shared.controller_config())
        .periodic("gc", image_cfg.gc_interval, GcKind::Images)
        .periodic("disk", image_cfg.pressure_interval, GcKind::Images)
        .watches(artifact_events(client), image_gc_keys);
    if images.trigger().trigger(GcKind::Images).is_err() {
        tracing::warn!("cannot enqueue the first image pass");
    }
    let stop = shutdown.clone();
    runs.push(Box::pin(images.run(stop)));

    if let Some(store) = artifacts {
        let blobs = blob_controller(
            Arc::new(store),
            client,
            Some(Arc::new(containerd.clone()) as Arc<dyn ManifestsInUse>),
            blob_config(config),
            config.collectors.gc_interval,
            shared,
        );
        let stop = shutdown.clone();
        runs.push(Box::pin(blobs.run(stop)));
    }
    runs
}

/// The blob controller over `store`: a pass every `gc_interval`, one right away, and one
/// whenever an artifact is archived or deleted.
fn blob_controller(
    store: Arc<dyn BlobStore>,
    client: &EntityClient,
    in_use: Option<Arc<dyn ManifestsInUse>>,
    config: BlobGcConfig,
    gc_interval: Duration,
    shared: &GcShared,
) -> Controller<Publishing<BlobReconciler>> {
    let deps = BlobGcDeps {
        store,
        entities: Arc::new(client.clone()),
        in_use,
        config,
    };
    let r = shared.publishing(BlobReconciler::new(
        BlobCollector::new(deps),
        Some(shared.gc.clone()),
        shared.board.clone(),
    ));
    let blobs = Controller::new(r, shared.controller_config())
        .periodic("gc", gc_interval, GcKind::Blobs)
        .watches(artifact_events(client), blob_gc_keys);
    if blobs.trigger().trigger(GcKind::Blobs).is_err() {
        tracing::warn!("cannot enqueue the first blob pass");
    }
    blobs
}

/// Runs blob GC alone over `store` until `stop` is cancelled, for a process that serves
/// the registry without a controller (`converge server`): artifacts are read through
/// `client`; no images-in-use are known there (the artifacts of images running anywhere
/// are active, which keeps their blobs). A pass runs at once, every `gc_interval`, and
/// when an artifact is archived or deleted; each pass is recorded on `shared`. Returns once
/// the controller has stopped; failed passes are retried with backoff and reported.
pub async fn run_blob_gc(
    store: ArtifactStore,
    client: EntityClient,
    config: BlobGcConfig,
    gc_interval: Duration,
    shared: GcShared,
    stop: tokio_util::sync::CancellationToken,
) {
    run_blob_gc_over(Arc::new(store), client, config, gc_interval, shared, stop).await;
}

/// Like [`run_blob_gc`], over any [`BlobStore`] (e.g. one whose deletions are fenced by a
/// leader term, `crate::server::leader::FencedBlobStore`).
pub async fn run_blob_gc_over(
    store: Arc<dyn BlobStore>,
    client: EntityClient,
    config: BlobGcConfig,
    gc_interval: Duration,
    shared: GcShared,
    stop: tokio_util::sync::CancellationToken,
) {
    let blobs = blob_controller(store, &client, None, config, gc_interval, &shared);
    let shutdown = Shutdown::new();
    let requested = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            shutdown.request();
        })
    };
    blobs.run(shutdown).await;
    requested.abort();
}
