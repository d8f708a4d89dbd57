//! Shared pieces of the reconcilers of actual state (orphans, images, blobs): the pass report, the last-pass board, GC metrics and the entity lookup they re-read desired state through.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use converge_watch::{ClientError, Entity, EntityClient, EntityId, Kind, ListFilter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::engine::{BoxError, Plan};

/// Which collector a pass belongs to; also the work-queue key of the three reconcilers
/// (each one only ever sees its own kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GcKind {
    /// Orphan containers and leaked snapshots.
    Orphans,
    /// Images in containerd.
    Images,
    /// Blobs in the registry's artifact store.
    Blobs,
}

impl GcKind {
    /// Lowercase name, used as the `kind` metric label and on the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            GcKind::Orphans => "orphans",
            GcKind::Images => "images",
            GcKind::Blobs => "blobs",
        }
    }
}

impl fmt::Display for GcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The summary of one pass, as the daemon publishes it (`converge describe node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPass {
    /// Which collector.
    pub kind: GcKind,
    /// When the pass started.
    pub started: DateTime<Utc>,
    /// When it finished.
    pub finished: DateTime<Utc>,
    /// Objects deleted (planned, in dry-run).
    pub deleted: u64,
    /// Bytes freed (planned, in dry-run), from content sizes; 0 where unknown.
    pub bytes_freed: u64,
    /// Candidates kept because something live uses them.
    pub kept_in_use: u64,
    /// Failures during the pass (each also in [`GcPassReport::problems`]).
    pub errors: u64,
    /// True when nothing was changed on purpose.
    pub dry_run: bool,
}

/// Something a pass looked at and deliberately kept, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// What, in the same form as a planned action's target (`container/<id>`, `image/<name>`, `blob/<digest>`).
    pub target: String,
    /// Why it stays.
    pub reason: String,
}

/// Everything one pass did or would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcPassReport {
    /// Counts and times.
    pub summary: LastPass,
    /// The deletions, in order (recorded in both modes, so a real pass can be audited too).
    pub plan: Plan,
    /// Candidates kept on purpose (in use, inside a grace period, reachability unknown).
    pub kept: Vec<Kept>,
    /// Errors and oddities (unparsable manifests, ignored file names, failed deletions).
    pub problems: Vec<String>,
}

impl GcPassReport {
    /// An empty report of a pass of `kind` starting now.
    pub fn start(kind: GcKind, dry_run: bool) -> Self {
        let now = Utc::now();
        Self {
            summary: LastPass {
                kind,
                started: now,
                finished: now,
                deleted: 0,
                bytes_freed: 0,
                kept_in_use: 0,
                errors: 0,
                dry_run,
            },
            plan: Plan::new(),
            kept: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Records a candidate kept on purpose.
    pub fn keep(&mut self, target: impl Into<String>, reason: impl Into<String>) {
        self.kept.push(Kept {
            target: target.into(),
            reason: reason.into(),
        });
    }

    /// Records a candidate kept because something live uses it (also counted in `kept_in_use`).
    pub fn keep_in_use(&mut self, target: impl Into<String>, reason: impl Into<String>) {
        self.summary.kept_in_use += 1;
        self.keep(target, reason);
    }

    /// Records an error or oddity (also counted in `errors`) and logs it.
    pub fn problem(&mut self, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(kind = %self.summary.kind, "{message}");
        self.summary.errors += 1;
        self.problems.push(message);
    }

    /// Stamps the finish time and logs the summary.
    pub fn finish(&mut self) {
        self.summary.finished = Utc::now();
        let s = &self.summary;
        tracing::info!(
            kind = %s.kind,
            dry_run = s.dry_run,
            deleted = s.deleted,
            bytes_freed = s.bytes_freed,
            kept_in_use = s.kept_in_use,
            errors = s.errors,
            "gc pass finished"
        );
    }
}

/// The latest [`LastPass`] of each kind, shared between the reconcilers and whoever
/// publishes them. Cloning is cheap; clones share the board.
#[derive(Debug, Clone, Default)]
pub struct LastPassBoard {
    inner: Arc<Mutex<BTreeMap<GcKind, LastPass>>>,
}

impl LastPassBoard {
    /// Replaces the entry of `pass.kind`.
    pub fn record(&self, pass: &LastPass) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pass.kind, pass.clone());
    }

    /// The latest pass of `kind`, if one finished.
    pub fn get(&self, kind: GcKind) -> Option<LastPass> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&kind)
            .cloned()
    }

    /// The latest pass of every kind that has run, ordered orphans, images, blobs.
    pub fn all(&self) -> Vec<LastPass> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// `converge_gc_deleted_total{kind}`, `converge_gc_bytes_freed_total{kind}` and
/// `converge_gc_last_run_timestamp_seconds{kind}`. Cheap to clone.
#[derive(Clone, Default)]
pub struct GcMetrics {
    deleted: Family<KindLabels, Counter>,
    bytes_freed: Family<KindLabels, Counter>,
    last_run: Family<KindLabels, Gauge<f64, AtomicU64>>,
}

impl fmt::Debug for GcMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcMetrics").finish_non_exhaustive()
    }
}

impl GcMetrics {
    /// Registers the three families in `registry`. Call once per registry.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "converge_gc_deleted",
            "Objects deleted by garbage collection",
            m.deleted.clone(),
        );
        registry.register(
            "converge_gc_bytes_freed",
            "Bytes freed by garbage collection (content sizes)",
            m.bytes_freed.clone(),
        );
        registry.register(
            "converge_gc_last_run_timestamp_seconds",
            "Unix time the last garbage collection pass finished",
            m.last_run.clone(),
        );
        m
    }

    /// Adds a finished real pass to the counters and stamps its finish time. Dry-run
    /// passes change no metric: they freed nothing.
    pub fn record(&self, pass: &LastPass) {
        if pass.dry_run {
            return;
        }
        let l = KindLabels {
            kind: pass.kind.as_str().to_string(),
        };
        self.deleted.get_or_create(&l).inc_by(pass.deleted);
        self.bytes_freed.get_or_create(&l).inc_by(pass.bytes_freed);
        let ts = pass.finished.timestamp_millis() as f64 / 1000.0;
        self.last_run.get_or_create(&l).set(ts);
    }
}

/// Where the collectors read desired state. The orphan collector re-reads every sandbox
/// by id right before deciding, so the implementation should ask the server, not a cache
/// that may lag.
#[async_trait]
pub trait EntitySource: Send + Sync + 'static {
    /// The entity `id` as the server has it now, `Ok(None)` when it does not exist; an
    /// error when the answer is unknown (the caller then keeps everything it concerns).
    async fn get(&self, id: &EntityId) -> Result<Option<Entity>, BoxError>;

    /// Every entity of `kind`; an error when the list cannot be read.
    async fn list(&self, kind: Kind) -> Result<Vec<Entity>, BoxError>;
}

#[async_trait]
impl EntitySource for EntityClient {
    async fn get(&self, id: &EntityId) -> Result<Option<Entity>, BoxError> {
        EntityClient::get(self, id)
            .await
            .map_err(|e: ClientError| Box::new(e) as BoxError)
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Entity>, BoxError> {
        let filter = ListFilter {
            kind: Some(kind),
            ..Default::default()
        };
        EntityClient::list(self, &filter)
            .await
            .map(|(entities, _)| entities)
            .map_err(|e| Box::new(e) as BoxError)
    }
}

/// True when `event` retires an artifact (applied with `spec.state` `archived`, or
/// deleted): what makes its image and blobs collectable.
pub fn is_artifact_retirement(event: &converge_watch::StreamEvent) -> bool {
    use converge_watch::StreamEvent;
    match event {
        StreamEvent::Applied(e) => {
            e.kind == Kind::Artifact
                && e.spec.get("state").and_then(|s| s.as_str()) == Some("archived")
        }
        StreamEvent::Deleted { entity, .. } => entity.kind == Kind::Artifact,
        StreamEvent::Restarted { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiving_or_deleting_an_artifact_retires_it_and_other_changes_do_not() {
        use converge_watch::StreamEvent;
        let id = EntityId::new(Kind::Artifact, "demo").expect("id");
        let archived = Entity::new(
            id.clone(),
            serde_json::json!({"image": "x", "manifest": "m", "state": "archived"}),
        );
        let active = Entity::new(id, serde_json::json!({"image": "x", "manifest": "m"}));
        assert!(is_artifact_retirement(&StreamEvent::Applied(archived)));
        assert!(!is_artifact_retirement(&StreamEvent::Applied(
            active.clone()
        )));
        assert!(is_artifact_retirement(&StreamEvent::Deleted {
            entity: active,
            revision: 3
        }));
        let sandbox = Entity::new(
            EntityId::new(Kind::Sandbox, "web").expect("id"),
            serde_json::json!({"state": "archived"}),
        );
        assert!(!is_artifact_retirement(&StreamEvent::Applied(sandbox)));
    }

    #[test]
    fn real_passes_feed_the_three_metric_families_and_dry_runs_do_not() {
        let mut registry = Registry::default();
        let metrics = GcMetrics::register(&mut registry);
        let mut report = GcPassReport::start(GcKind::Blobs, false);
        report.summary.deleted = 3;
        report.summary.bytes_freed = 4096;
        report.finish();
        metrics.record(&report.summary);
        let mut dry = GcPassReport::start(GcKind::Images, true);
        dry.summary.deleted = 9;
        metrics.record(&dry.summary);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("converge_gc_deleted_total{kind=\"blobs\"} 3"));
        assert!(text.contains("converge_gc_bytes_freed_total{kind=\"blobs\"} 4096"));
        assert!(text.contains("converge_gc_last_run_timestamp_seconds{kind=\"blobs\"}"));
        assert!(!text.contains("kind=\"images\""));
    }

    #[test]
    fn the_board_keeps_the_latest_pass_of_each_kind() {
        let board = LastPassBoard::default();
        let mut a = GcPassReport::start(GcKind::Orphans, false);
        a.summary.deleted = 1;
        board.record(&a.summary);
        a.summary.deleted = 2;
        board.record(&a.summary);
        board.record(&GcPassReport::start(GcKind::Blobs, true).summary);
        assert_eq!(board.get(GcKind::Orphans).map(|p| p.deleted), Some(2));
        assert_eq!(board.all().len(), 2);
        assert!(board.get(GcKind::Images).is_none());
    }
}
