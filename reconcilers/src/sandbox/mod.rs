//! Sandbox reconcilers. For now only the plan-only one, until the containerd-backed one lands.

pub mod plan_only;

pub use plan_only::PlanOnlySandboxReconciler;
