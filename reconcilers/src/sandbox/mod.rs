//! Sandbox reconcilers: the containerd-backed one, and the plan-only one it replaces.

pub mod config;
mod container;
mod dead;
pub mod error;
pub mod events;
pub mod fault;
pub mod metrics;
pub mod network;
pub mod plan_only;
pub mod reconciler;
pub mod status;
mod teardown;
pub mod timers;
mod transitions;
pub mod volumes;

pub use config::{Backoff, SandboxConfig};
pub use error::SandboxError;
pub use events::spawn_exit_watcher;
pub use metrics::SandboxMetrics;
pub use network::SandboxNetworking;
pub use plan_only::PlanOnlySandboxReconciler;
pub use reconciler::{LABEL_SPEC_HASH, SandboxReconciler};
