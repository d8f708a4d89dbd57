//! The orphan pass itself: classify each labelled container by re-reading its sandbox from the server, count grace from first sight, remove through the executor.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use converge_watch::spec::{Phase, SandboxStatus};
use converge_watch::{EntityId, Kind};
use tokio::time::Instant;
use tracing::Instrument;

use super::network::{Leak, OrphanNetworkConfig, published_owners, sweep, sweep_published};
use super::{OrphanConfig, OrphanError};
use crate::containerd::{ContainerdClient, LABEL_ENTITY_ID, SnapshotKind};
use crate::engine::{Executor, PlannedAction, Verb};
use crate::gc_report::{EntitySource, GcKind, GcPassReport};
use crate::network::network_name;

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
    network: Option<OrphanNetworkConfig>,
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
            network: None,
        }
    }

    /// Also sweeps leaked sandbox networks (see [`OrphanCollector::pass_at`]) on the node
    /// networking described by `network`. Without this the pass never touches networks.
    pub fn with_network(mut self, network: OrphanNetworkConfig) -> Self {
        self.network = Some(network);
        self
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
    /// A failed lookup keeps the container. With [`OrphanCollector::with_network`], the pass
    /// then sweeps leaked sandbox networks: an address allocation whose sandbox is not live
    /// (same re-read, no grace) and that has no container left (containers re-listed just
    /// before) loses its veth and netns, then its IP (released with the teardown proof); a
    /// pinned netns or bridge veth with no allocation is swept only when the namespace has
    /// no container at all. Fails only when containerd cannot be listed; other failures
    /// are counted in the report.
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
        if let Some(network) = &self.network {
            self.network_pass(network, exec, &mut report).await;
        }
        report.finish();
        Ok(report)
    }

    /// The network sweep, after containers: each address allocation whose sandbox (re-read
    /// by id) is gone, meant for another node or dead is a leak; so is a pinned netns or
    /// bridge veth matching no allocation. A failed lookup keeps the network.
    async fn network_pass(
        &self,
        network: &OrphanNetworkConfig,
        exec: &Executor,
        report: &mut GcPassReport,
    ) {
        // Published-port rules first (before any address is released): those naming a
        // sandbox confirmed gone (same re-read, no grace) go; the others stay.
        match published_owners(network).await {
            Ok(owners) => {
                let mut gone = Vec::new();
                for id in owners {
                    match self.verdict(&id).await {
                        Verdict::Owned => {}
                        Verdict::Unknown(why) => report.keep(format!("nft-rule/{id}"), why),
                        Verdict::Orphan(reason) => gone.push((id, reason)),
                    }
                }
                sweep_published(network, gone, exec, report).await;
            }
            Err(e) => report.problem(format!("published port sweep skipped: {e}")),
        }
        let inventory = match network.inventory().await {
            Ok(inventory) => inventory,
            Err(e) => {
                report.problem(format!("network sweep skipped: {e}"));
                return;
            }
        };
        let mut leaks = Vec::new();
        let mut indexed = HashSet::new();
        for (id, ip) in inventory.allocations {
            indexed.insert(network_name(&id));
            let target = format!("network/{}", network_name(&id));
            let span = tracing::info_span!("network_check", entity = %id);
            match self.verdict(&id).instrument(span).await {
                Verdict::Owned => {}
                Verdict::Unknown(why) => {
                    report.problem(format!("{target}: kept, sandbox {id} unknown: {why}"));
                    report.keep(&target, format!("sandbox {id} could not be checked"));
                }
                Verdict::Orphan(reason) => leaks.push(Leak::Sandbox { id, ip, reason }),
            }
        }
        let unindexed: BTreeSet<String> = inventory
            .pinned
            .into_iter()
            .chain(inventory.veths)
            .filter(|name| !indexed.contains(name))
            .collect();
        leaks.extend(unindexed.into_iter().map(|name| Leak::Unindexed { name }));
        sweep(network, &self.client, leaks, exec, report).await;
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
