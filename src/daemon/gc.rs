//! The GC reconcilers (orphans, images, blobs) wired as engine controllers for the daemon, and the `<data-dir>/gc-last-pass.json` record `converge describe node` reads.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use converge_reconcilers::blobs::{
    BlobCollector, BlobGcConfig, BlobGcDeps, BlobReconciler, BlobStore, ManifestsInUse,
    blob_gc_keys,
};
use converge_reconcilers::containerd::ContainerdClient;
use converge_reconcilers::engine::{
    Action, Context, Controller, ControllerConfig, EngineMetrics, Executor, QueueConfig,
    ReconcileError, Reconciler, RunnerConfig, Shutdown, WriteTracker,
};
use converge_reconcilers::gc_report::{EntitySource, GcKind, GcMetrics, LastPass, LastPassBoard};
use converge_reconcilers::images::{
    ImageCollector, ImageGcConfig, ImageReconciler, StatvfsDisk, image_gc_keys,
};
use converge_reconcilers::orphans::{
    OrphanCollector, OrphanConfig, OrphanReconciler, forward_containerd_events,
};
use converge_watch::Kind;
use converge_watch::client::{EntityClient, ListFilter};
use converge_watch::stream::{StreamConfig, watch_stream};
use serde::{Deserialize, Serialize};

use super::flags::DaemonConfig;
use crate::registry::ArtifactStore;

/// Name of the last-pass record in the data directory.
pub const LAST_PASS_FILE: &str = "gc-last-pass.json";

/// How often image GC checks for disk pressure.
pub const PRESSURE_INTERVAL: Duration = Duration::from_secs(60);

/// Why the last-pass record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum GcRecordError {
    /// Writing or renaming the file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the file failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a last-pass record.
    #[error("{path} is not a GC last-pass record")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The record could not be encoded.
    #[error("cannot encode the GC last-pass record")]
    Encode(#[source] serde_json::Error),
}

/// What `<data-dir>/gc-last-pass.json` holds: the latest pass of each GC kind on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGcRecord {
    /// The node's id.
    pub node: String,
    /// When the record was written.
    pub updated: DateTime<Utc>,
    /// The latest pass of each kind that has run, ordered orphans, images, blobs.
    pub passes: Vec<LastPass>,
}

/// `<data_dir>/gc-last-pass.json`.
pub fn last_pass_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LAST_PASS_FILE)
}

/// Reads the record at `path`: `Ok(None)` when no daemon has written one yet, an error
/// when it cannot be read or is not a record.
pub fn read_last_passes(path: &Path) -> Result<Option<NodeGcRecord>, GcRecordError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(GcRecordError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| GcRecordError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes the board to one file atomically (temp file in the same directory, then
/// rename), one writer at a time. Cloning is cheap; clones share the lock.
#[derive(Debug, Clone)]
pub struct LastPassFile {
    path: PathBuf,
    node: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl LastPassFile {
    /// A writer of `path` for node `node`.
    pub fn new(path: PathBuf, node: impl Into<String>) -> Self {
        Self {
            path,
            node: node.into(),
            lock: Arc::default(),
        }
    }

    /// Replaces the file with the board's current content. On failure the old file (if
    /// any) stays whole and the error says why.
    pub async fn publish(&self, board: &LastPassBoard) -> Result<(), GcRecordError> {
        let _held = self.lock.lock().await;
        let record = NodeGcRecord {
            node: self.node.clone(),
            updated: Utc::now(),
            passes: board.all(),
        };
        let mut json = serde_json::to_vec_pretty(&record).map_err(GcRecordError::Encode)?;
        json.push(b'\n');
        let tmp = self
            .path
            .with_file_name(format!(".{LAST_PASS_FILE}.tmp-{}", std::process::id()));
        let err = |source| GcRecordError::Write {
            path: self.path.clone(),
            source,
        };
        tokio::fs::write(&tmp, &json).await.map_err(err)?;
        if let Err(e) = tokio::fs::rename(&tmp, &self.path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err(e));
        }
        Ok(())
    }
}

/// A GC reconciler that publishes the board to the last-pass file after each reconcile
/// (pass or failure); a failed write is logged and does not fail the pass.
#[derive(Debug)]
pub struct Publishing<R> {
    inner: R,
    board: LastPassBoard,
    file: LastPassFile,
}

impl<R> Publishing<R> {
    /// Wraps `inner`, which records into `board`.
    pub fn new(inner: R, board: LastPassBoard, file: LastPassFile) -> Self {
        Self { inner, board, file }
    }
}

#[async_trait]
impl<R: Reconciler<Key = GcKind>> Reconciler for Publishing<R> {
    type Key = GcKind;

    async fn reconcile(&self, key: &GcKind, ctx: &Context) -> Result<Action, ReconcileError> {
        let result = self.inner.reconcile(key, ctx).await;
        if let Err(e) = self.file.publish(&self.board).await {
            tracing::warn!(kind = %key, error = %e, "cannot publish the GC last-pass record");
        }
        result
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

/// The settings of the orphan collector from the daemon's.
pub fn orphan_config(config: &DaemonConfig) -> OrphanConfig {
    OrphanConfig {
        node_id: config.node_id.clone(),
        orphan_grace: config.collectors.orphan_grace,
        stop_grace: config.stop_grace,
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
        OrphanCollector::new(containerd.clone(), entities.clone(), orphan_config(config)),
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
            store,
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
    store: ArtifactStore,
    client: &EntityClient,
    in_use: Option<Arc<dyn ManifestsInUse>>,
    config: BlobGcConfig,
    gc_interval: Duration,
    shared: &GcShared,
) -> Controller<Publishing<BlobReconciler>> {
    let deps = BlobGcDeps {
        store: Arc::new(store) as Arc<dyn BlobStore>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use converge_reconcilers::gc_report::GcPassReport;

    #[tokio::test]
    async fn the_record_is_written_whole_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = last_pass_path(dir.path());
        assert!(read_last_passes(&path).expect("read").is_none());
        let board = LastPassBoard::default();
        let mut pass = GcPassReport::start(GcKind::Orphans, false);
        pass.summary.deleted = 2;
        board.record(&pass.summary);
        let file = LastPassFile::new(path.clone(), "n1");
        file.publish(&board).await.expect("publish");
        let record = read_last_passes(&path).expect("read").expect("some");
        assert_eq!(record.node, "n1");
        assert_eq!(record.passes, vec![pass.summary]);
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "no temp file stays behind");
    }

    #[test]
    fn a_file_that_is_no_record_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = last_pass_path(dir.path());
        std::fs::write(&path, b"{not json").expect("write");
        let err = read_last_passes(&path).expect_err("refused");
        assert!(err.to_string().contains(LAST_PASS_FILE), "{err}");
    }
}
