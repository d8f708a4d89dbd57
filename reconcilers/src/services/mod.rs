//! The service controller's pieces: endpoint computation, the sandbox-event mapper and the
//! `ServiceReconciler` (design in `docs/services.md`).

pub mod endpoints;
pub mod mapper;
pub mod reconciler;

#[cfg(test)]
mod reconciler_tests;
#[cfg(test)]
mod tests;

pub use endpoints::{
    Endpoint, EndpointSet, NotReady, ServiceStatus, compute_endpoints, json_selects,
    selector_matches, selects, status_for, target_port,
};
pub use mapper::SandboxEventMapper;
pub use reconciler::{ServiceError, ServiceReconciler};
