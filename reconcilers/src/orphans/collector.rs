//! The orphan pass itself: classify each labelled container by re-reading its sandbox from the server, count grace from first sight, remove through the executor.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use converge_watch::spec::{Phase, SandboxStatus};
use converge_watch::{EntityId, Kind};
use tokio::time::Instant;
use tracing::Instrument;

use super::{OrphanConfig, OrphanError};
use crate::containerd::{ContainerdClient, LABEL_ENTITY_ID, SnapshotKind};
use crate::engine::{Executor, PlannedAction, Verb};
use crate::gc_report::{EntitySource, GcKind, GcPassReport};

/// Prefix of the container ids (and so snapshot keys) of sandbox containers.
const SANDBOX_CONTAINER_PREFIX: &str = "sandbox.";

/// What the owner lookup said about a container.
#[derive(Debug, Clone)]
enum Verdict {
    /// The owner exists, is ours and is not dead: keep.
    Owned,
    /// The owner could not be read, is not a sandbox, or the label is no entity id: keep
    /// and report.
    Unknown(String),
    /// Orphaned, with why.
    Orphan(String),
}

/// Remembers when each orphan was first seen and removes orphans whose grace has run out.
/// First-seen times live in memory only: after a restart every clock starts again (the
/// safe direction).
pub struct OrphanCollector {
    client: ContainerdClient,
    entities: Arc<dyn EntitySource>,
    config: OrphanConfig,
    containers_seen: Mutex<HashMap<String, Instant>>,
    snapshots_seen: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for OrphanCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrphanCollector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OrphanCollector {
    /// A collector acting on `client`'s namespace, reading sandboxes from `entities`.
    pub fn new(
        client: ContainerdClient,
        entities: Arc<dyn EntitySource>,
        config: OrphanConfig,
    ) -> Self {
        Self {
            client,
            entities,
            config,
            containers_seen: Mutex::default(),
            snapshots_seen: Mutex::default(),
        }
    }

    /// One pass at the current time; see [`OrphanCollector::pass_at`].
    pub async fn pass(&self, exec: &Executor) -> Result<GcPassReport, OrphanError> {
        self.pass_at(Instant::now(), exec).await
    }

    /// One pass as if the time were `now` (tests inject the clock here). Containers without
    /// the owner label are never looked at. A labelled container is an orphan when its
    /// sandbox, re-read by id from the entity source, does not exist, names another node,
    /// or is `dead`; it is removed (SIGTERM, stop grace, SIGKILL, then task, record and
    /// snapshot) once it has been seen orphaned for `orphan_grace`. An Active snapshot keyed
    /// like a sandbox container with no such container is removed after the same grace.
    /// A failed lookup keeps the container. Fails only when containerd cannot be listed;
    /// other failures are counted in the report.
    pub async fn pass_at(
        &self,
        now: Instant,
        exec: &Executor,
    ) -> Result<GcPassReport, OrphanError> {
        let mut report = GcPassReport::start(GcKind::Orphans, exec.is_dry_run());
        // Snapshots first: a container record is created before its snapshot, so a snapshot
        // listed before the containers cannot belong to a container missing from that list.
        let snapshots = self
            .client
            .list_snapshots()
            .await
            .map_err(OrphanError::ListSnapshots)?;
        let containers = self
            .client
            .list_containers(&[])
            .await
            .map_err(OrphanError::ListContainers)?;
        let existing: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        let mut verdicts: HashMap<String, Verdict> = HashMap::new();
        let mut orphans_now = HashSet::new();
        for c in &containers {
            let Some(owner) = c.labels.get(LABEL_ENTITY_ID) else {
                continue;
            };
            let span = tracing::info_span!("orphan_check", entity = %owner, container = %c.id);
            let verdict = match verdicts.get(owner) {
                Some(v) => v.clone(),
                None => {
                    let v = self.verdict(owner).instrument(span.clone()).await;
                    verdicts.insert(owner.clone(), v.clone());
                    v
                }
            };
            let target = format!("container/{}", c.id);
            let reason = match verdict {
                Verdict::Owned => continue,
                Verdict::Unknown(why) => {
                    report.problem(format!("{target}: kept, owner {owner} unknown: {why}"));
                    report.keep(&target, format!("owner {owner} could not be checked"));
                    continue;
                }
                Verdict::Orphan(reason) => reason,
            };
            orphans_now.insert(c.id.clone());
            if !self.grace_over(&self.containers_seen, &c.id, now) {
                report.keep(
                    &target,
                    format!(
                        "{reason}; inside orphan grace {:?}",
                        self.config.orphan_grace
                    ),
                );
                continue;
            }
            let action = PlannedAction::new(Verb::Delete, &target, &reason);
            let removal = self.client.remove_container(&c.id, self.config.stop_grace);
            match exec.perform(action.clone(), removal).instrument(span).await {
                Ok(_) => {
                    report.summary.deleted += 1;
                    report.plan.push(action);
                    orphans_now.remove(&c.id);
                }
                Err(e) => report.problem(format!("removing {target}: {e}")),
            }
        }
        forget_others(&self.containers_seen, &orphans_now);

        let mut leaked_now = HashSet::new();
        for s in snapshots {
            if s.kind != SnapshotKind::Active
                || !s.name.starts_with(SANDBOX_CONTAINER_PREFIX)
                || existing.contains(s.name.as_str())
            {
                continue;
            }
            let target = format!("snapshot/{}", s.name);
            leaked_now.insert(s.name.clone());
            if !self.grace_over(&self.snapshots_seen, &s.name, now) {
                report.keep(
                    &target,
                    format!(
                        "no container {}; inside orphan grace {:?}",
                        s.name, self.config.orphan_grace
                    ),
                );
                continue;
            }
            let action = PlannedAction::new(
                Verb::Delete,
                &target,
                format!("leaked: no container {} exists", s.name),
            );
            match exec
                .perform(action.clone(), self.client.remove_snapshot(&s.name))
                .await
            {
                Ok(_) => {
                    report.summary.deleted += 1;
                    report.plan.push(action);
                    leaked_now.remove(&s.name);
                }
                Err(e) => report.problem(format!("removing {target}: {e}")),
            }
        }
        forget_others(&self.snapshots_seen, &leaked_now);
        // Seam for the network orphan sweep (netns, veth, IPs of containers that no longer
        // exist): it belongs here, after containers are gone, keyed by the same
        // `existing` set, once the network layer exposes listing and release.
        report.finish();
        Ok(report)
    }

    /// True when `key` was first seen orphaned at least `orphan_grace` before `now`;
    /// records `now` as its first sighting otherwise.
    fn grace_over(&self, seen: &Mutex<HashMap<String, Instant>>, key: &str, now: Instant) -> bool {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let first = *seen.entry(key.to_string()).or_insert(now);
        now.saturating_duration_since(first) >= self.config.orphan_grace
    }

    /// Re-reads the owner from the entity source and classifies the container.
    async fn verdict(&self, owner: &str) -> Verdict {
        let id: EntityId = match owner.parse() {
            Ok(id) => id,
            Err(e) => {
                return Verdict::Unknown(format!("owner label {owner:?} is no entity id ({e})"));
            }
        };
        if id.kind() != Kind::Sandbox {
            return Verdict::Unknown(format!("owner {id} is not a sandbox"));
        }
        let entity = match self.entities.get(&id).await {
            Ok(Some(entity)) => entity,
            Ok(None) => return Verdict::Orphan(format!("sandbox {id} does not exist")),
            Err(e) => return Verdict::Unknown(e.to_string()),
        };
        let node = entity.node();
        if !node.is_empty() && node != self.config.node_id {
            return Verdict::Orphan(format!(
                "sandbox {id} is meant for node {node}, this is {}",
                self.config.node_id
            ));
        }
        let phase = serde_json::from_value::<SandboxStatus>(entity.status.clone())
            .map(|s| s.phase)
            .unwrap_or_default();
        if phase == Phase::Dead {
            return Verdict::Orphan(format!("sandbox {id} is dead"));
        }
        Verdict::Owned
    }
}

/// Drops the first-seen times of everything not in `current` (no longer an orphan, or gone).
fn forget_others(seen: &Mutex<HashMap<String, Instant>>, current: &HashSet<String>) {
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|k, _| current.contains(k));
}
