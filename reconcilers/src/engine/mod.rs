//! The reusable controller engine: work queue, retries, runner, resync, write tracking, dry-run plans.
//!
//! Nothing here knows about containerd, networks or artifacts; any reconciler keyed by any
//! [`QueueKey`] can use it.

pub mod backoff;
pub mod controller;
pub mod metrics;
pub mod pass;
pub mod plan;
pub mod queue;
pub mod reconciler;
pub mod runner;
pub mod shutdown;
pub mod status;
pub mod tracker;

pub use backoff::{BackoffConfig, BucketConfig};
pub use controller::{Controller, ControllerConfig, KeyCache, Trigger};
pub use metrics::{ControllerMetrics, EngineMetrics};
pub use pass::{PassReport, run_pass};
pub use plan::{Executor, Plan, PlannedAction, Verb};
pub use queue::{Lane, QueueConfig, QueueError, WorkQueue};
pub use reconciler::{Action, BoxError, Context, QueueKey, ReconcileError, Reconciler};
pub use runner::{Runner, RunnerConfig};
pub use shutdown::Shutdown;
pub use status::{StatusError, StatusStore, StatusStoreError, StatusWriter};
pub use tracker::WriteTracker;
