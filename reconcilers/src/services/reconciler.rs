//! `ServiceReconciler`: recomputes one service's endpoints from the sandboxes it selects
//! and writes them into its status.

use std::time::Duration;

use async_trait::async_trait;
use converge_watch::cache::Cache;
use converge_watch::spec::ServiceSpec;
use converge_watch::{Entity, EntityId, Kind};
use serde_json::{Value, json};

use super::endpoints::{compute_endpoints, status_for};
use crate::engine::{
    Action, Context, ReconcileError, Reconciler, StatusError, StatusStore, StatusStoreError,
    StatusWriter,
};

/// How long a service waits for the sandbox list before it is looked at again.
const SANDBOXES_NOT_READY_DELAY: Duration = Duration::from_millis(500);

/// Why writing a service's status failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The status write gave up (conflicts, or the server failed).
    #[error("cannot write the status of {id}")]
    Status {
        /// The service concerned.
        id: EntityId,
        /// Why.
        #[source]
        source: StatusError,
    },
}

/// Reconciles `service` entities: level-triggered, each call reads the service and every
/// sandbox from the caches and writes the endpoints it computes (see
/// [`compute_endpoints`]) with the [`StatusWriter`] (expected revision, re-read and
/// recompute on conflict, nothing written when unchanged, a plan entry in dry-run).
pub struct ServiceReconciler<S> {
    services: Cache,
    sandboxes: Cache,
    writer: StatusWriter<S>,
    default_node: String,
}

impl<S> std::fmt::Debug for ServiceReconciler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceReconciler")
            .field("default_node", &self.default_node)
            .finish_non_exhaustive()
    }
}

impl<S: StatusStore> ServiceReconciler<S> {
    /// A reconciler reading services from `services` and sandboxes (of every node) from
    /// `sandboxes`, writing through `writer`. Sandboxes naming no node are reported on
    /// `default_node` (the one node of `converge up`; empty when unknown).
    pub fn new(
        services: Cache,
        sandboxes: Cache,
        writer: StatusWriter<S>,
        default_node: impl Into<String>,
    ) -> Self {
        Self {
            services,
            sandboxes,
            writer,
            default_node: default_node.into(),
        }
    }

    /// The status `current` should have now: its endpoints among the cached sandboxes, or
    /// for a spec that does not parse, no endpoints and a message saying why.
    fn desired_status(&self, current: &Entity) -> Option<Value> {
        match serde_json::from_value::<ServiceSpec>(current.spec.clone()) {
            Ok(spec) => {
                let sandboxes = self.sandboxes.list_kind(Kind::Sandbox);
                let set = compute_endpoints(
                    &spec,
                    sandboxes.iter().map(AsRef::as_ref),
                    &self.default_node,
                );
                status_for(current, &spec, &set)
            }
            Err(e) => {
                let mut status = current.status.as_object().cloned().unwrap_or_default();
                status.insert("endpoints".into(), json!([]));
                status.insert("message".into(), json!(format!("invalid spec: {e}")));
                Some(Value::Object(status))
            }
        }
    }
}

#[async_trait]
impl<S: StatusStore> Reconciler for ServiceReconciler<S> {
    type Key = EntityId;

    async fn reconcile(&self, key: &EntityId, _ctx: &Context) -> Result<Action, ReconcileError> {
        if key.kind() != Kind::Service {
            return Ok(Action::Done);
        }
        if !self.sandboxes.is_ready() {
            tracing::debug!(id = %key, "sandbox list not loaded yet");
            return Ok(Action::RequeueAfter(SANDBOXES_NOT_READY_DELAY));
        }
        let Some(service) = self.services.get(key) else {
            return Ok(Action::Done);
        };
        match self
            .writer
            .write(&service, |e| self.desired_status(e))
            .await
        {
            Ok(Some(written)) => {
                tracing::info!(id = %key, revision = written.revision, endpoints = written.status["endpoints"].as_array().map_or(0, Vec::len), "service endpoints updated");
                Ok(Action::Done)
            }
            Ok(None) => Ok(Action::Done),
            Err(StatusError::Store(StatusStoreError::NotFound { .. })) => Ok(Action::Done),
            Err(source) => Err(ReconcileError::transient_from(
                "service status",
                ServiceError::Status {
                    id: key.clone(),
                    source,
                },
            )),
        }
    }

    fn name(&self) -> &str {
        "service"
    }
}
