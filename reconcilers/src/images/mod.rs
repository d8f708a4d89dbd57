//! The image reconciler: removes containerd images of archived artifacts, optionally unknown old images, and least-recently-used unused images under disk pressure; never an image a container uses.

mod collector;
mod disk;
mod sizes;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use converge_watch::StreamEvent;

use crate::containerd::{ContainerdClient, ContainerdError};
use crate::engine::Executor;
use crate::gc_reconciler::{GcCollector, GcReconciler};
use crate::gc_report::{EntitySource, GcKind, GcPassReport, is_artifact_retirement};

pub use collector::ImageCollector;
pub use disk::{DiskError, DiskStats, DiskUsage, StatvfsDisk};

/// Tuning of image GC.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGcConfig {
    /// Eviction starts when the disk is at least this full, in percent (default 85).
    pub disk_high: f64,
    /// Eviction stops once projected usage is below this, in percent (default 80).
    pub disk_low: f64,
    /// Images first seen less than this long ago are never evicted for pressure (default 2 min).
    pub min_age: Duration,
    /// Images no artifact names are removed once first seen this long ago; `None` (the
    /// default) keeps them.
    pub unknown_image_max_age: Option<Duration>,
    /// Period of the full pass (default 1 h).
    pub gc_interval: Duration,
    /// Period of the disk-pressure check (default 1 min).
    pub pressure_interval: Duration,
}

impl Default for ImageGcConfig {
    fn default() -> Self {
        Self {
            disk_high: 85.0,
            disk_low: 80.0,
            min_age: Duration::from_secs(120),
            unknown_image_max_age: None,
            gc_interval: Duration::from_secs(3600),
            pressure_interval: Duration::from_secs(60),
        }
    }
}

/// Why an image pass could not run at all (per-image failures land in the report).
#[derive(Debug, thiserror::Error)]
pub enum ImageGcError {
    /// containerd's container list could not be read, so use cannot be proven.
    #[error("listing containers")]
    ListContainers(#[source] ContainerdError),
    /// containerd's image list could not be read.
    #[error("listing images")]
    ListImages(#[source] ContainerdError),
}

/// What a one-shot image pass needs.
#[derive(Clone)]
pub struct ImageGcDeps {
    /// containerd, in converge's namespace.
    pub client: ContainerdClient,
    /// Where artifacts are listed (the entity server).
    pub entities: Arc<dyn EntitySource>,
    /// Disk usage of containerd's root filesystem.
    pub disk: Arc<dyn DiskUsage>,
    /// Thresholds and ages.
    pub config: ImageGcConfig,
}

impl std::fmt::Debug for ImageGcDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageGcDeps")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One image pass with fresh first-seen times (what `converge reconcile --kind images`
/// runs): archived-artifact images are planned; with a non-zero `min_age` nothing is
/// evicted for pressure (every image was just seen). Fails only when containerd cannot
/// be listed.
pub async fn image_pass(deps: &ImageGcDeps, exec: &Executor) -> Result<GcPassReport, ImageGcError> {
    ImageCollector::new(
        deps.client.clone(),
        deps.entities.clone(),
        deps.disk.clone(),
        deps.config.clone(),
    )
    .pass(exec)
    .await
}

/// Image GC as an engine reconciler keyed by [`GcKind::Images`] (other keys are ignored).
/// Wire it with `periodic("gc", gc_interval, Images)`, `periodic("disk", pressure_interval,
/// Images)` and `watches(artifacts, image_gc_keys)`.
pub type ImageReconciler = GcReconciler<ImageCollector>;

#[async_trait]
impl GcCollector for ImageCollector {
    const KIND: GcKind = GcKind::Images;
    type Error = ImageGcError;

    async fn pass(&self, exec: &Executor) -> Result<GcPassReport, ImageGcError> {
        ImageCollector::pass(self, exec).await
    }
}

/// Mapper for `Controller::watches` over artifact events: `[Images]` when an artifact was
/// archived or deleted, nothing otherwise.
pub fn image_gc_keys(event: &StreamEvent) -> Vec<GcKind> {
    if is_artifact_retirement(event) {
        vec![GcKind::Images]
    } else {
        Vec::new()
    }
}
