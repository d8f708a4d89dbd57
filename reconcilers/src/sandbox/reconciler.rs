//! The containerd-backed sandbox reconciler: reads a sandbox from the cache and makes the
//! containers labelled with its id match it, then writes its status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use converge_watch::cache::Cache;
use converge_watch::spec::{DesiredState, SandboxSpec};
use converge_watch::{Entity, EntityId, Kind};
use sha2::{Digest, Sha256};

use super::config::SandboxConfig;
use super::error::SandboxError;
use super::fault::{FaultStep, fault_point};
use super::network::{DEFAULT_PORT_TIMEOUT, SandboxNetworking, wait_for_ports};
use super::status::{
    ContainerObservation, DeadState, StatusInput, dead_state, phase_of, status_for,
};
use super::timers::Timers;
use super::volumes::ensure_volumes;
use crate::artifacts::ImagePuller;
use crate::containerd::{
    ContainerRecord, ContainerdClient, LABEL_CONTAINER_NAME, LABEL_ENTITY_ID, container_id,
};
use crate::engine::{
    Action, Context, Executor, ReconcileError, Reconciler, StatusStore, StatusStoreError,
    StatusWriter, WriteTracker,
};
use crate::logs::LifecycleLog;

/// Label on converge containers: hash of the container's spec, so a spec change recreates
/// exactly the containers it changed.
pub const LABEL_SPEC_HASH: &str = "runtime.computer/spec-hash";

/// The plan target of a containerd container.
pub fn container_target(container_id: &str) -> String {
    format!("container/{container_id}")
}

/// The plan target of a container's task.
pub fn task_target(container_id: &str) -> String {
    format!("task/{container_id}")
}

/// Short hash of a JSON-serializable value (16 hex digits of its SHA-256).
pub(crate) fn short_hash<T: serde::Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// Converges sandboxes onto containerd (see `docs/sandbox.md`). Every mutation goes
/// through the context's executor; statuses are written with the engine's
/// [`StatusWriter`]. Cheap to share: hold it in an `Arc` (the engine does).
pub struct SandboxReconciler<S> {
    pub(super) cache: Cache,
    pub(super) containerd: ContainerdClient,
    pub(super) puller: Arc<ImagePuller>,
    pub(super) statuses: Arc<S>,
    tracker: Arc<WriteTracker>,
    pub(super) config: SandboxConfig,
    pub(super) timers: Timers,
    pub(super) network: Option<SandboxNetworking>,
}

impl<S> std::fmt::Debug for SandboxReconciler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxReconciler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: StatusStore> SandboxReconciler<S> {
    /// A reconciler reading sandboxes from `cache`, acting on `containerd`, pulling
    /// `cluster.local:5000/...` images with `puller`, and writing statuses to `statuses`
    /// (recording its writes in `tracker`, which must be the controller's).
    pub fn new(
        cache: Cache,
        containerd: ContainerdClient,
        puller: Arc<ImagePuller>,
        statuses: Arc<S>,
        tracker: Arc<WriteTracker>,
        config: SandboxConfig,
    ) -> Self {
        let timers = Timers::new(
            config.restart_backoff,
            config.restart_reset_after,
            config.failure_backoff,
        );
        Self {
            cache,
            containerd,
            puller,
            statuses,
            tracker,
            config,
            timers,
            network: None,
        }
    }

    /// Gives every sandbox its own network namespace and address from `network` (without
    /// this, containers run on the host's network). See `docs/sandbox.md`.
    pub fn with_network(mut self, network: SandboxNetworking) -> Self {
        self.network = Some(network);
        self
    }

    /// The network namespace a sandbox's containers join; `None` = the host's network.
    pub(super) fn netns_path(&self, id: &EntityId) -> Option<PathBuf> {
        self.network.as_ref().map(|n| n.netns_path(&id.to_string()))
    }

    /// Sandboxes that left something on this node besides containers: an address in the
    /// allocation file, a volume directory or a log directory. A controller enqueues them
    /// (with the sandboxes owning containers) when it starts, so a teardown that a crash
    /// interrupted after the containers were gone is finished; a live sandbox among them is
    /// simply reconciled once more. Unreadable directories count as empty.
    pub async fn leftovers(&self) -> Vec<EntityId> {
        let mut ids: Vec<EntityId> = match &self.network {
            Some(network) => network
                .allocated_sandboxes()
                .await
                .iter()
                .filter_map(|id| id.parse::<EntityId>().ok())
                .collect(),
            None => Vec::new(),
        };
        for root in [&self.config.volume_root, &self.config.log_root] {
            let Ok(mut dir) = tokio::fs::read_dir(root).await else {
                continue;
            };
            while let Ok(Some(entry)) = dir.next_entry().await {
                if let Some(name) = entry.file_name().to_str()
                    && let Ok(id) = EntityId::new(Kind::Sandbox, name)
                {
                    ids.push(id);
                }
            }
        }
        ids.retain(|id| id.kind() == Kind::Sandbox);
        ids.sort_by_key(ToString::to_string);
        ids.dedup();
        ids
    }

    /// Where the logs of sandbox `id` go.
    pub(super) fn log_dir(&self, id: &EntityId) -> PathBuf {
        self.config.log_root.join(id.name())
    }

    /// The containerd containers labelled with sandbox `key`; fails transiently when
    /// containerd cannot list them.
    pub(super) async fn owned_containers(
        &self,
        key: &EntityId,
    ) -> Result<Vec<ContainerRecord>, ReconcileError> {
        self.containerd
            .list_containers(&[(LABEL_ENTITY_ID, &key.to_string())])
            .await
            .map_err(|e| ReconcileError::transient_from("cannot list the sandbox's containers", e))
    }

    async fn converge(&self, key: &EntityId, exec: &Executor) -> Result<Action, ReconcileError> {
        let owned = self.owned_containers(key).await?;
        let entity = match self.cache.get(key) {
            Some(entity) => entity,
            // The cache may lag behind the server (or filter the sandbox out): never tear
            // anything down on its word alone. Re-read the sandbox by id; only a confirmed
            // "not found" means deleted, and any other answer leaves everything as it is.
            None => match self.statuses.get(key).await {
                Ok(fresh) => Arc::new(fresh),
                Err(StatusStoreError::NotFound { .. }) => {
                    self.teardown(key, owned, exec, "sandbox deleted", true)
                        .await?;
                    self.timers.forget(key);
                    return Ok(Action::Done);
                }
                Err(e) => {
                    return Err(ReconcileError::transient_from(
                        "cannot confirm with the server that the sandbox is gone",
                        e,
                    ));
                }
            },
        };
        let entity = self.fresh_if_container_lost(entity, &owned).await?;
        let spec: SandboxSpec = match serde_json::from_value(entity.spec.clone()) {
            Ok(spec) => spec,
            Err(e) => {
                let message = format!("spec is not a valid sandbox spec: {e}");
                self.write_failure(&entity, exec, &message).await?;
                return Err(ReconcileError::terminal(message));
            }
        };
        if !self.config.owns_node(&spec.node) {
            let reason = format!("sandbox is for node {:?}, not this one", spec.node);
            self.teardown(key, owned, exec, &reason, false).await?;
            self.timers.forget(key);
            return Ok(Action::Done);
        }
        self.converge_spec(&entity, &spec, owned, exec).await
    }

    async fn converge_spec(
        &self,
        entity: &Entity,
        spec: &SandboxSpec,
        owned: Vec<ContainerRecord>,
        exec: &Executor,
    ) -> Result<Action, ReconcileError> {
        let key = &entity.id;
        let grace = spec
            .stop_grace_seconds
            .map_or(self.config.default_stop_grace, |s| {
                Duration::from_secs(u64::from(s))
            });
        let mut by_name: HashMap<String, ContainerRecord> = HashMap::new();
        let mut strays = Vec::new();
        for record in owned {
            match record.labels.get(LABEL_CONTAINER_NAME) {
                Some(name)
                    if spec.containers.iter().any(|c| &c.name == name)
                        && record.id == container_id(key, name) =>
                {
                    by_name.insert(name.clone(), record);
                }
                _ => strays.push(record),
            }
        }
        for stray in strays {
            self.remove(&stray.id, grace, exec, "no longer in the sandbox spec")
                .await
                .map_err(|e| ReconcileError::transient_from("cannot remove a container", e))?;
        }
        let spec_hash = short_hash(spec);
        if spec.state == DesiredState::Running
            && dead_state(&entity.status, &spec_hash) == DeadState::StaysDead
        {
            return self.hold_dead(entity, spec, by_name, spec_hash, exec).await;
        }
        let mut observed = Vec::with_capacity(spec.containers.len());
        let mut requeue: Option<Duration> = None;
        let mut failure: Option<SandboxError> = None;
        let mut ip = None;
        if let Some(network) = &self.network
            && spec.state == DesiredState::Running
        {
            // A sandbox without containers yet gets a full (idempotent) network pass, so
            // a crash half-way through a previous setup is repaired before they join.
            match network
                .connect(&key.to_string(), by_name.is_empty(), exec)
                .await
            {
                Ok(addr) => ip = addr,
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_none()
            && spec.state == DesiredState::Running
            && let Err(e) =
                ensure_volumes(&self.config.volume_root, key.name(), &spec.volumes, exec).await
        {
            failure = Some(e.into());
        }
        if failure.is_none() && spec.state == DesiredState::Running && !exec.is_dry_run() {
            fault_point(FaultStep::VolumesReady);
        }
        // Without its network (or volumes), no container may start.
        let containers = if failure.is_none() {
            spec.containers.as_slice()
        } else {
            &[]
        };
        for c in containers {
            let existing = by_name.remove(&c.name);
            match self
                .converge_container(entity, spec, c, existing, grace, exec)
                .await
            {
                Ok((obs, after)) => {
                    observed.push(obs);
                    if let Some(d) = after {
                        requeue = Some(requeue.map_or(d, |r| r.min(d)));
                    }
                }
                Err(e) if e.is_infrastructure() => {
                    return Err(ReconcileError::transient_from(
                        format!("cannot converge container {}", c.name),
                        e,
                    ));
                }
                Err(e) => {
                    tracing::warn!(container = %c.name, error = %e, "container failed");
                    observed.push(ContainerObservation::new(&c.name, "failed"));
                    failure.get_or_insert(e);
                }
            }
        }
        if failure.is_none()
            && spec.state == DesiredState::Running
            && !exec.is_dry_run()
            && !observed.is_empty()
            && observed.iter().all(|o| o.state == "running")
            && let Err(e) = self.wait_ports(key, spec).await
        {
            if e.is_infrastructure() {
                return Err(ReconcileError::transient_from(
                    "cannot check the sandbox's ports",
                    e,
                ));
            }
            tracing::warn!(error = %e, "sandbox ports not ready");
            failure = Some(e);
        }
        // Host ports are forwarded once the sandbox's ports are ready, and withdrawn when
        // it is stopped (docs/network.md, "Published host ports").
        let ports_ready = spec.state == DesiredState::Stopped
            || exec.is_dry_run()
            || (!observed.is_empty() && observed.iter().all(|o| o.state == "running"));
        if failure.is_none()
            && ports_ready
            && let Some(network) = &self.network
            && let Err(e) = network.publish(&key.to_string(), spec, ip, exec).await
        {
            tracing::warn!(error = %e, "cannot publish the sandbox's host ports");
            failure = Some(e);
        }
        if failure.is_none() && !exec.is_dry_run() && spec.state == DesiredState::Running {
            fault_point(FaultStep::PortsReady);
        }
        let failure_text = failure.as_ref().map(ToString::to_string);
        let (phase, message) = phase_of(spec.state, &observed, failure_text.as_deref());
        let input = StatusInput {
            phase,
            message,
            containers: observed,
            revision: entity.revision,
            spec_hash,
            ip: ip.map(|a| a.to_string()),
            ip_released: false,
        };
        self.record_transitions(entity, spec, &input, exec);
        self.write_status(entity, exec, &input).await?;
        if !exec.is_dry_run() {
            fault_point(FaultStep::StatusWritten);
        }
        if failure.is_some() {
            let delay = self.timers.failed(key);
            tracing::info!(?delay, "sandbox failed; retrying later");
            // A restart due sooner in another container must not wait for the retry.
            return Ok(Action::RequeueAfter(
                requeue.map_or(delay, |r| r.min(delay)),
            ));
        }
        self.timers.succeeded(key);
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }

    /// Waits for every port the spec declares to listen in the sandbox's namespace (seen
    /// through the first container's task), at most `port_timeout_seconds` (default 15 s).
    async fn wait_ports(&self, key: &EntityId, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let ports: Vec<u16> = spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter_map(|p| u16::try_from(p.port).ok())
            .collect();
        let Some(first) = spec.containers.first() else {
            return Ok(());
        };
        if ports.is_empty() {
            return Ok(());
        }
        let cid = container_id(key, &first.name);
        let task = self
            .containerd
            .task_status(&cid)
            .await
            .map_err(|e| SandboxError::containerd(&first.name, e))?;
        let Some(pid) = task.map(|t| t.pid).filter(|pid| *pid > 0) else {
            return Ok(());
        };
        let timeout = spec
            .port_timeout_seconds
            .map_or(DEFAULT_PORT_TIMEOUT, |s| Duration::from_secs(u64::from(s)));
        wait_for_ports(pid, &ports, timeout).await
    }

    pub(super) async fn write_status(
        &self,
        entity: &Entity,
        exec: &Executor,
        input: &StatusInput,
    ) -> Result<(), ReconcileError> {
        let writer = StatusWriter::new(self.statuses.clone(), self.tracker.clone(), exec.clone());
        match writer
            .write(entity, |current| status_for(current, input))
            .await
        {
            Ok(_) => Ok(()),
            Err(crate::engine::StatusError::Store(crate::engine::StatusStoreError::NotFound {
                ..
            })) => {
                tracing::debug!("sandbox deleted while reconciling; its status is moot");
                Ok(())
            }
            Err(e) => Err(ReconcileError::transient_from(
                "cannot write the sandbox status",
                e,
            )),
        }
    }

    async fn write_failure(
        &self,
        entity: &Entity,
        exec: &Executor,
        message: &str,
    ) -> Result<(), ReconcileError> {
        if !exec.is_dry_run() {
            let dir = self.log_dir(&entity.id);
            // Best effort, only where the sandbox already has a log dir, and once (a resync
            // of the same failure records nothing).
            let again = entity.status["phase"] == "failed" && entity.status["message"] == message;
            if dir.is_dir()
                && !again
                && let Err(e) =
                    LifecycleLog::record(&dir, entity.id.name(), &format!("failed: {message}"))
            {
                tracing::warn!(error = %e, "cannot record lifecycle event");
            }
        }
        let (phase, message) = phase_of(Default::default(), &[], Some(message));
        let input = StatusInput {
            phase,
            message,
            containers: Vec::new(),
            revision: entity.revision,
            spec_hash: short_hash(&entity.spec),
            ip: None,
            ip_released: false,
        };
        self.write_status(entity, exec, &input).await
    }
}

#[async_trait]
impl<S: StatusStore> Reconciler for SandboxReconciler<S> {
    type Key = EntityId;

    async fn reconcile(&self, key: &EntityId, ctx: &Context) -> Result<Action, ReconcileError> {
        if key.kind() != Kind::Sandbox {
            return Ok(Action::Done);
        }
        if !ctx.executor.is_dry_run() {
            return self.converge(key, &ctx.executor).await;
        }
        // Dry-run: plan this key on its own so its plan can be logged, then hand it on.
        let local = Executor::dry_run();
        let out = self.converge(key, &local).await;
        let plan = local.plan();
        if plan.is_empty() {
            tracing::debug!("dry-run: no changes");
        } else {
            tracing::info!(actions = plan.len(), "dry-run plan:\n{}", plan.to_table());
        }
        for action in plan.actions() {
            ctx.executor.note(action.clone());
        }
        out
    }

    fn name(&self) -> &str {
        "sandbox"
    }
}
