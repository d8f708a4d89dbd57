//! One engine reconciler for every GC pass (orphans, images, blobs): run the pass, record it.

use async_trait::async_trait;

use crate::engine::{Action, Context, Executor, ReconcileError, Reconciler};
use crate::gc_report::{GcKind, GcMetrics, GcPassReport, LastPassBoard};

/// A collector that makes one level-triggered pass over its kind of garbage.
#[async_trait]
pub trait GcCollector: Send + Sync + 'static {
    /// The key the collector's reconciler answers to; other keys are ignored.
    const KIND: GcKind;
    /// Why a pass failed as a whole.
    type Error: std::error::Error + Send + Sync + 'static;

    /// One pass; every deletion goes through `exec`, so a dry-run executor changes nothing.
    async fn pass(&self, exec: &Executor) -> Result<GcPassReport, Self::Error>;
}

/// GC as an engine reconciler keyed by [`GcCollector::KIND`]: a pass per reconcile, its
/// summary recorded into the metrics (if any) and the last-pass board. A failed pass is a
/// transient error, so the engine retries it with backoff.
#[derive(Debug)]
pub struct GcReconciler<C> {
    collector: C,
    metrics: Option<GcMetrics>,
    board: LastPassBoard,
}

impl<C: GcCollector> GcReconciler<C> {
    /// A reconciler around `collector`, recording into `metrics` (if any) and `board`.
    pub fn new(collector: C, metrics: Option<GcMetrics>, board: LastPassBoard) -> Self {
        Self {
            collector,
            metrics,
            board,
        }
    }
}

#[async_trait]
impl<C: GcCollector> Reconciler for GcReconciler<C> {
    type Key = GcKind;

    async fn reconcile(&self, key: &GcKind, ctx: &Context) -> Result<Action, ReconcileError> {
        if *key != C::KIND {
            return Ok(Action::Done);
        }
        let report =
            self.collector.pass(&ctx.executor).await.map_err(|e| {
                ReconcileError::transient_from(format!("{} pass", C::KIND.as_str()), e)
            })?;
        if let Some(m) = &self.metrics {
            m.record(&report.summary);
        }
        self.board.record(&report.summary);
        Ok(Action::Done)
    }

    fn name(&self) -> &str {
        C::KIND.as_str()
    }
}
