//! Maps sandbox watch events to the services they concern, keeping the controller's copy of
//! the sandboxes current on the way.

use std::collections::BTreeSet;

use converge_watch::cache::Cache;
use converge_watch::{Entity, EntityId, StreamEvent};

use super::endpoints::{json_selects, lists};

/// Turns each sandbox event into the ids of the services to recompute. Holds the sandbox
/// cache (which it updates with each event, so it sees the labels before and after) and
/// the service cache (read only). Cloning is cheap; clones share both caches.
#[derive(Debug, Clone)]
pub struct SandboxEventMapper {
    sandboxes: Cache,
    services: Cache,
}

impl SandboxEventMapper {
    /// A mapper updating `sandboxes` and reading `services`.
    pub fn new(sandboxes: Cache, services: Cache) -> Self {
        Self {
            sandboxes,
            services,
        }
    }

    /// Applies `event` to the sandbox cache and returns, sorted and without duplicates:
    /// - for a changed or deleted sandbox, every service whose selector matches its labels
    ///   before or after the change (so a relabel removes it from the old service), and
    ///   every service whose status lists it (so a deletion removes its endpoint);
    /// - for a full relist that changed anything, every known service (level-triggered:
    ///   each is recomputed from scratch);
    /// - nothing for a stale or unchanged event.
    pub fn map(&self, event: &StreamEvent) -> Vec<EntityId> {
        let before = match event {
            StreamEvent::Applied(e) | StreamEvent::Deleted { entity: e, .. } => {
                self.sandboxes.get(&e.id)
            }
            StreamEvent::Restarted { .. } => None,
        };
        let changed = self.sandboxes.apply(event);
        if changed.is_empty() {
            return Vec::new();
        }
        let services = self.services.list_kind(converge_watch::Kind::Service);
        let mut keys = BTreeSet::new();
        match event {
            StreamEvent::Restarted { .. } => {
                keys.extend(services.iter().map(|s| s.id.clone()));
            }
            StreamEvent::Applied(after) => {
                let sides: Vec<&Entity> = before.as_deref().into_iter().chain([after]).collect();
                keys.extend(concerned(&services, &after.id, &sides));
            }
            StreamEvent::Deleted { entity, .. } => {
                let sides: Vec<&Entity> = before.as_deref().into_iter().chain([entity]).collect();
                keys.extend(concerned(&services, &entity.id, &sides));
            }
        }
        keys.into_iter().collect()
    }
}

/// Services whose selector matches the labels of any of `sides` (versions of one
/// sandbox), or whose status lists `sandbox`.
fn concerned(
    services: &[std::sync::Arc<Entity>],
    sandbox: &EntityId,
    sides: &[&Entity],
) -> Vec<EntityId> {
    let sandbox = sandbox.to_string();
    services
        .iter()
        .filter(|service| {
            let selector = &service.spec["selector"];
            sides.iter().any(|side| json_selects(selector, side)) || lists(service, &sandbox)
        })
        .map(|s| s.id.clone())
        .collect()
}
