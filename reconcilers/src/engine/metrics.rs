//! Prometheus metrics of the engine (work queue and runner), one set per controller label.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of every engine metric: the controller's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

/// Labels of `controller_runtime_reconcile_total`: controller and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 10 µs .. ~10 min, like client-go's workqueue buckets stretched a little.
    Histogram::new(exponential_buckets(1e-5, 4.0, 14))
}

/// The metric families of the engine, registered once in a shared [`Registry`]; hand each
/// controller its own labelled handles with [`EngineMetrics::controller`].
#[derive(Clone)]
pub struct EngineMetrics {
    depth: Family<ControllerLabels, Gauge>,
    adds: Family<ControllerLabels, Counter>,
    queue_duration: HistogramFamily<ControllerLabels>,
    work_duration: HistogramFamily<ControllerLabels>,
    retries: Family<ControllerLabels, Counter>,
    unfinished: Family<ControllerLabels, Gauge<f64, AtomicU64>>,
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_panics: Family<ControllerLabels, Counter>,
    reconcile_time: HistogramFamily<ControllerLabels>,
    active_workers: Family<ControllerLabels, Gauge>,
}

impl std::fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineMetrics").finish_non_exhaustive()
    }
}

impl EngineMetrics {
    /// Registers every engine metric family in `registry`. Call once per registry: a second
    /// call would register the names twice and the text output would repeat them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            depth: Family::default(),
            adds: Family::default(),
            queue_duration: Family::new_with_constructor(duration_histogram),
            work_duration: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
            unfinished: Family::default(),
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_panics: Family::default(),
            reconcile_time: Family::new_with_constructor(duration_histogram),
            active_workers: Family::default(),
        };
        registry.register(
            "workqueue_depth",
            "Keys waiting in the work queue",
            m.depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Keys added to the work queue",
            m.adds.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long a key waits in the queue before a worker takes it",
            m.queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long processing a key takes",
            m.work_duration.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Rate-limited re-adds (retries)",
            m.retries.clone(),
        );
        registry.register(
            "workqueue_unfinished_work_seconds",
            "Seconds of work in progress not yet observed by work_duration",
            m.unfinished.clone(),
        );
        registry.register(
            "controller_runtime_reconcile",
            "Reconciles by result",
            m.reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Reconciles that returned an error",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_panics",
            "Reconciles that panicked",
            m.reconcile_panics.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Time per reconcile",
            m.reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Workers currently reconciling",
            m.active_workers.clone(),
        );
        m
    }

    /// Handles labelled `controller="<name>"`; cheap to clone, shared with the registry.
    pub fn controller(&self, name: &str) -> ControllerMetrics {
        let l = ControllerLabels {
            controller: name.to_string(),
        };
        let result = |r: &str| {
            self.reconcile_total.get_or_create_owned(&ResultLabels {
                controller: name.to_string(),
                result: r.to_string(),
            })
        };
        ControllerMetrics(Arc::new(Handles {
            depth: self.depth.get_or_create_owned(&l),
            adds: self.adds.get_or_create_owned(&l),
            queue_duration: self.queue_duration.get_or_create_owned(&l),
            work_duration: self.work_duration.get_or_create_owned(&l),
            retries: self.retries.get_or_create_owned(&l),
            unfinished: self.unfinished.get_or_create_owned(&l),
            success: result("success"),
            error: result("error"),
            requeue_after: result("requeue_after"),
            panic: result("panic"),
            reconcile_errors: self.reconcile_errors.get_or_create_owned(&l),
            reconcile_panics: self.reconcile_panics.get_or_create_owned(&l),
            reconcile_time: self.reconcile_time.get_or_create_owned(&l),
            active_workers: self.active_workers.get_or_create_owned(&l),
        }))
    }
}

#[derive(Debug)]
struct Handles {
    depth: Gauge,
    adds: Counter,
    queue_duration: Histogram,
    work_duration: Histogram,
    retries: Counter,
    unfinished: Gauge<f64, AtomicU64>,
    success: Counter,
    error: Counter,
    requeue_after: Counter,
    panic: Counter,
    reconcile_errors: Counter,
    reconcile_panics: Counter,
    reconcile_time: Histogram,
    active_workers: Gauge,
}

/// How one reconcile ended, for `controller_runtime_reconcile_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// `Action::Done`.
    Success,
    /// `Action::RequeueAfter`.
    RequeueAfter,
    /// An error (retried or terminal) or a timeout.
    Error,
    /// The reconciler panicked.
    Panic,
}

/// One controller's labelled metric handles. Recording never fails and never blocks for long.
#[derive(Debug, Clone)]
pub struct ControllerMetrics(Arc<Handles>);

impl ControllerMetrics {
    pub(crate) fn set_depth(&self, depth: usize) {
        self.0.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
    pub(crate) fn add(&self) {
        self.0.adds.inc();
    }
    pub(crate) fn queued_for(&self, seconds: f64) {
        self.0.queue_duration.observe(seconds);
    }
    pub(crate) fn worked_for(&self, seconds: f64) {
        self.0.work_duration.observe(seconds);
    }
    pub(crate) fn retry(&self) {
        self.0.retries.inc();
    }
    pub(crate) fn set_unfinished(&self, seconds: f64) {
        self.0.unfinished.set(seconds);
    }
    pub(crate) fn reconciled(&self, outcome: ReconcileOutcome, seconds: f64) {
        self.0.reconcile_time.observe(seconds);
        match outcome {
            ReconcileOutcome::Success => self.0.success.inc(),
            ReconcileOutcome::RequeueAfter => self.0.requeue_after.inc(),
            ReconcileOutcome::Error => {
                self.0.reconcile_errors.inc();
                self.0.error.inc()
            }
            ReconcileOutcome::Panic => {
                self.0.reconcile_panics.inc();
                self.0.panic.inc()
            }
        };
    }
    pub(crate) fn worker_started(&self) {
        self.0.active_workers.inc();
    }
    pub(crate) fn worker_finished(&self) {
        self.0.active_workers.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_controller_label() {
        let mut registry = Registry::default();
        let metrics = EngineMetrics::register(&mut registry);
        let c = metrics.controller("sandbox");
        c.add();
        c.set_depth(3);
        c.reconciled(ReconcileOutcome::Panic, 0.01);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for name in [
            "workqueue_depth{controller=\"sandbox\"} 3",
            "workqueue_adds_total{controller=\"sandbox\"} 1",
            "workqueue_queue_duration_seconds",
            "workqueue_work_duration_seconds",
            "workqueue_retries_total",
            "workqueue_unfinished_work_seconds",
            "controller_runtime_reconcile_total{controller=\"sandbox\",result=\"panic\"} 1",
            "controller_runtime_reconcile_errors_total",
            "controller_runtime_reconcile_panics_total{controller=\"sandbox\"} 1",
            "controller_runtime_reconcile_time_seconds",
            "controller_runtime_active_workers",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
