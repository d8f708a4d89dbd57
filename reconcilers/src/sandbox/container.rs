//! Converging one container of a sandbox: image, create (or recreate on a spec change),
//! start, stop, and the restart policy on exit.

use std::time::Duration;

use converge_watch::Entity;
use converge_watch::spec::{ContainerSpec, DesiredState, RestartPolicy, SandboxSpec};

use super::error::SandboxError;
use super::fault::{FaultStep, fault_point};
use super::reconciler::{
    LABEL_SPEC_HASH, SandboxReconciler, container_target, short_hash, task_target,
};
use super::status::{ContainerObservation, DeadState, OOM_KILLED, REMOVED, dead_state};
use super::timers::RestartDecision;
use super::volumes::bind_mounts;
use crate::artifacts::{CLUSTER_REGISTRY_HOST, ImageReference, PullError};
use crate::containerd::cgroups::CgroupLayout;
use crate::containerd::{
    ContainerRecord, ContainerRequest, ResolvedImage, RuntimeSpecInput, TaskIo, TaskState,
    build_runtime_spec, cgroup_path, container_id, container_labels,
};
use crate::engine::{Executor, PlannedAction, StatusStore, Verb};
use crate::logs::{DriverConfig, LifecycleLog};

/// Observation of the container plus, when it should be looked at again, after how long.
type Outcome = (ContainerObservation, Option<Duration>);

impl<S: StatusStore> SandboxReconciler<S> {
    /// Makes container `c` of `entity` match the spec: recreates it when its spec hash
    /// changed, creates it when missing (pulling its image if needed), then starts, stops or
    /// restarts its task as `spec.state` and `spec.restart` say.
    pub(super) async fn converge_container(
        &self,
        entity: &Entity,
        spec: &SandboxSpec,
        c: &ContainerSpec,
        existing: Option<ContainerRecord>,
        grace: Duration,
        exec: &Executor,
    ) -> Result<Outcome, SandboxError> {
        let key = &entity.id;
        let cid = container_id(key, &c.name);
        let hash = short_hash(c);
        let mut recreated = false;
        let mut existing = existing;
        if let Some(record) = &existing
            && record.labels.get(LABEL_SPEC_HASH) != Some(&hash)
        {
            let reason = format!(
                "container spec changed (sandbox revision {})",
                entity.revision
            );
            self.remove(&cid, grace, exec, &reason).await?;
            self.timers.forget_container(key, &c.name);
            existing = None;
            recreated = true;
        }
        if existing.is_none() {
            if spec.state == DesiredState::Stopped {
                let mut obs = ContainerObservation::new(&c.name, "absent");
                obs.recreated = recreated;
                return Ok((obs, None));
            }
            self.create(entity, spec, c, &cid, &hash, exec).await?;
            recreated = true;
            if exec.is_dry_run() {
                exec.note(PlannedAction::new(
                    Verb::Start,
                    task_target(&cid),
                    "new container",
                ));
                let mut obs = ContainerObservation::new(&c.name, "pending");
                obs.recreated = true;
                return Ok((obs, None));
            }
        }
        let task = self
            .containerd
            .task_status(&cid)
            .await
            .map_err(|e| SandboxError::containerd(&c.name, e))?;
        let mut obs = ContainerObservation::new(&c.name, "unknown");
        obs.recreated = recreated;
        let state = task.as_ref().map(|t| t.state);
        let exit_code = task.as_ref().and_then(|t| t.exit_code).map(i64::from);
        if spec.state == DesiredState::Stopped {
            obs.state = "stopped".to_string();
            obs.exit_code = exit_code;
            if matches!(
                state,
                Some(TaskState::Running | TaskState::Created | TaskState::Paused)
            ) {
                let action = PlannedAction::new(Verb::Stop, task_target(&cid), "spec says stopped");
                let stopped = exec
                    .perform(action, self.containerd.stop_task(&cid, grace))
                    .await
                    .map_err(|e| SandboxError::containerd(&c.name, e))?;
                obs.exit_code = stopped.flatten().map(i64::from);
            }
            return Ok((obs, None));
        }
        match state {
            Some(TaskState::Running) => {
                obs.state = "running".to_string();
                Ok((obs, None))
            }
            None | Some(TaskState::Created) => {
                if state.is_none() && !recreated && self.rootfs_missing(&c.name, &cid).await? {
                    // A crash between creating the record and preparing its snapshot:
                    // the record alone cannot run, so the container is made afresh.
                    self.remove(&cid, grace, exec, "container has no rootfs snapshot")
                        .await?;
                    self.create(entity, spec, c, &cid, &hash, exec).await?;
                    obs.recreated = true;
                }
                self.start(entity, c, &cid, exec, "task not running", "started")
                    .await?;
                self.timers.started(key, &c.name);
                obs.state = "running".to_string();
                Ok((obs, None))
            }
            Some(TaskState::Stopped) if was_stopped_on_request(entity, &c.name) => {
                // Stopped because the spec said so, and now asked to run again: a plain
                // start, not a restart.
                let event = "started: the spec says running again";
                self.start(entity, c, &cid, exec, "spec says running again", event)
                    .await?;
                self.timers.started(key, &c.name);
                obs.state = "running".to_string();
                Ok((obs, None))
            }
            Some(TaskState::Stopped)
                if dead_state(&entity.status, &short_hash(spec)) == DeadState::Revived =>
            {
                // The sandbox died and its spec changed since: it starts afresh, a plain
                // start of what is left, not a restart the policy counts.
                let event = "started: the spec changed after the sandbox died";
                let reason = "sandbox revived by a spec change";
                self.start(entity, c, &cid, exec, reason, event).await?;
                self.timers.started(key, &c.name);
                obs.state = "running".to_string();
                Ok((obs, None))
            }
            Some(TaskState::Stopped) => {
                obs.exit_code = exit_code;
                let oom = self.oom_kill(&cid);
                if oom.is_some() {
                    obs.reason = Some(OOM_KILLED.to_string());
                }
                let ended = exit_text(exit_code, oom);
                let policy = policy_name(spec.restart);
                // Exit events are recorded once: on the transition the status shows.
                let before = last_status(entity, &c.name);
                let already = |state: &str| before.as_ref().is_some_and(|b| b.0 == state);
                let wanted = match spec.restart {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => exit_code != Some(0),
                    RestartPolicy::Never => false,
                };
                if !wanted {
                    obs.state = "exited".to_string();
                    obs.finished = true;
                    if !already("exited") {
                        let event = format!("{ended}; restart policy {policy}: not restarting");
                        self.event(exec, key, &c.name, &event);
                    }
                    return Ok((obs, None));
                }
                let decision = self.timers.exit_seen(key, &c.name);
                if !already("restarting") {
                    let when = match decision {
                        RestartDecision::After(d) => format!("in {}", millis(d)),
                        RestartDecision::Now => "now".to_string(),
                    };
                    let event = format!("{ended}; restart policy {policy}: restarting {when}");
                    self.event(exec, key, &c.name, &event);
                }
                match decision {
                    RestartDecision::After(d) => {
                        obs.state = "restarting".to_string();
                        Ok((obs, Some(d)))
                    }
                    RestartDecision::Now => {
                        let reason = format!(
                            "exited with code {}; restart policy {:?}",
                            exit_code.unwrap_or(-1),
                            spec.restart
                        );
                        let count = before.map_or(0, |b| b.1).saturating_add(1);
                        let event = format!("restarted (restart {count}) after: {ended}");
                        self.start(entity, c, &cid, exec, &reason, &event).await?;
                        self.timers.restarted(key, &c.name);
                        obs.state = "running".to_string();
                        obs.restarts = 1;
                        Ok((obs, None))
                    }
                }
            }
            Some(TaskState::Paused | TaskState::Unknown) => {
                obs.state = "unknown".to_string();
                Ok((obs, Some(self.config.restart_backoff.cap)))
            }
        }
    }

    /// What container `c` of a dead sandbox is, changing nothing (see `docs/sandbox.md`,
    /// "Dead sandboxes"): [`REMOVED`] when `existing` is `None`, `running` while its task
    /// runs (the orphan pass stops it), `unknown` for a paused task, `exited` otherwise. An
    /// exit the status has not recorded yet (it last said the container ran) brings its
    /// code, OOM kill and one lifecycle event; otherwise the recorded exit code and reason
    /// stay. Fails when containerd cannot be asked about the task.
    pub(super) async fn observe_dead(
        &self,
        entity: &Entity,
        c: &ContainerSpec,
        existing: Option<&ContainerRecord>,
        exec: &Executor,
    ) -> Result<ContainerObservation, SandboxError> {
        if existing.is_none() {
            return Ok(ContainerObservation::new(&c.name, REMOVED));
        }
        let cid = container_id(&entity.id, &c.name);
        let task = self
            .containerd
            .task_status(&cid)
            .await
            .map_err(|e| SandboxError::containerd(&c.name, e))?;
        let mut obs = ContainerObservation::new(&c.name, "exited");
        match task.as_ref().map(|t| t.state) {
            Some(TaskState::Running) => obs.state = "running".to_string(),
            Some(TaskState::Paused | TaskState::Unknown) => obs.state = "unknown".to_string(),
            Some(TaskState::Stopped) => {
                let before = last_status(entity, &c.name);
                let fresh = before
                    .as_ref()
                    .is_some_and(|b| b.0 == "running" || b.0 == "restarting");
                if fresh {
                    obs.exit_code = task.as_ref().and_then(|t| t.exit_code).map(i64::from);
                    let oom = self.oom_kill(&cid);
                    if oom.is_some() {
                        obs.reason = Some(OOM_KILLED.to_string());
                    }
                    let ended = exit_text(obs.exit_code, oom);
                    let event = format!("{ended}; the sandbox is dead: not restarting");
                    self.event(exec, &entity.id, &c.name, &event);
                }
            }
            None | Some(TaskState::Created) => {}
        }
        Ok(obs)
    }

    /// True when container `cid` has no rootfs snapshot (so no task can be created on it).
    async fn rootfs_missing(&self, name: &str, cid: &str) -> Result<bool, SandboxError> {
        let snapshot = self
            .containerd
            .stat_snapshot(cid)
            .await
            .map_err(|e| SandboxError::containerd(name, e))?;
        Ok(snapshot.is_none())
    }

    /// When the kernel killed a process of container `cid` for memory (its cgroup's OOM
    /// kill counter is not zero): the cgroup's memory limit, if it has one. `None` when it
    /// was not, or when the cgroup cannot be read (gone, or a host without one).
    fn oom_kill(&self, cid: &str) -> Option<Option<u64>> {
        let path = cgroup_path(self.containerd.namespace(), cid);
        match CgroupLayout::host().usage(&path) {
            Ok(Some(usage)) if usage.oom_kills > 0 => Some(usage.memory_limit_bytes),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(container = cid, error = %e, "cannot read the container's cgroup");
                None
            }
        }
    }

    /// Records lifecycle `event` about `subject` (a container, or the sandbox's name) of
    /// sandbox `key`; best effort (a full disk must not fail a reconcile), never in dry-run.
    pub(super) fn event(
        &self,
        exec: &Executor,
        key: &converge_watch::EntityId,
        subject: &str,
        event: &str,
    ) {
        if exec.is_dry_run() {
            return;
        }
        if let Err(e) = LifecycleLog::record(&self.log_dir(key), subject, event) {
            tracing::warn!(error = %e, subject, "cannot record lifecycle event");
        }
    }

    /// Starts (or restarts) the task of `cid`, output to `<log_root>/<sandbox>/<name>.log`;
    /// once it runs, records lifecycle `event`. `reason` is the plan's.
    async fn start(
        &self,
        entity: &Entity,
        c: &ContainerSpec,
        cid: &str,
        exec: &Executor,
        reason: &str,
        event: &str,
    ) -> Result<(), SandboxError> {
        let dir = self.log_dir(&entity.id);
        let log = dir.join(format!("{}.log", c.name));
        let io = match &self.config.log_driver {
            Some(program) => DriverConfig::new(&dir, &c.name)
                .task_io(program)
                .map_err(|e| SandboxError::containerd(&c.name, e))?,
            None => TaskIo {
                stdout: log.clone(),
                stderr: log,
            },
        };
        let start = async {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|source| SandboxError::Logs {
                    path: dir.display().to_string(),
                    source,
                })?;
            self.containerd
                .start_task(cid, &io)
                .await
                .map_err(|e| SandboxError::containerd(&c.name, e))?;
            fault_point(FaultStep::TaskStarted);
            // The lifecycle record is best effort: a full disk must not fail the start.
            if let Err(e) = LifecycleLog::record(&dir, &c.name, event) {
                tracing::warn!(error = %e, container = %c.name, "cannot record lifecycle event");
            }
            Ok::<(), SandboxError>(())
        };
        let action = PlannedAction::new(Verb::Start, task_target(cid), reason.to_string());
        exec.perform(action, start).await?;
        Ok(())
    }

    /// Creates container `cid` for `c`, pulling its image first when containerd lacks it.
    async fn create(
        &self,
        entity: &Entity,
        spec: &SandboxSpec,
        c: &ContainerSpec,
        cid: &str,
        hash: &str,
        exec: &Executor,
    ) -> Result<(), SandboxError> {
        let present = self
            .containerd
            .get_image(&c.image)
            .await
            .map_err(|e| SandboxError::containerd(&c.name, e))?
            .is_some();
        if !present {
            self.pull(c, exec).await?;
        }
        let create = async {
            let image = self
                .containerd
                .resolve_image(&c.image)
                .await
                .map_err(|e| SandboxError::containerd(&c.name, e))?;
            self.create_from(entity, spec, c, cid, hash, &image).await?;
            let event = format!("created: image {}", c.image);
            if let Err(e) = LifecycleLog::record(&self.log_dir(&entity.id), &c.name, &event) {
                tracing::warn!(error = %e, container = %c.name, "cannot record lifecycle event");
            }
            fault_point(FaultStep::ContainerCreated);
            Ok::<(), SandboxError>(())
        };
        let action = PlannedAction::new(
            Verb::Create,
            container_target(cid),
            format!("container {} missing (image {})", c.name, c.image),
        );
        exec.perform(action, create).await?;
        Ok(())
    }

    async fn pull(&self, c: &ContainerSpec, exec: &Executor) -> Result<(), SandboxError> {
        let unknown = || SandboxError::UnknownImage {
            container: c.name.clone(),
            image: c.image.clone(),
        };
        if exec.is_dry_run() {
            // Reading only: say now whether a real run could pull it at all.
            let ours = ImageReference::parse(&c.image)
                .map(|r| r.host == CLUSTER_REGISTRY_HOST)
                .unwrap_or(false);
            if !ours {
                return Err(unknown());
            }
        }
        let action = PlannedAction::new(
            Verb::Pull,
            format!("image/{}", c.image),
            "not in containerd",
        );
        let pull = self.puller.pull(&self.containerd, &c.image);
        match exec.perform(action, pull).await {
            Ok(_) => Ok(()),
            Err(PullError::UnknownRegistry(_)) => Err(unknown()),
            Err(source) => Err(SandboxError::Pull {
                container: c.name.clone(),
                image: c.image.clone(),
                source,
            }),
        }
    }

    async fn create_from(
        &self,
        entity: &Entity,
        sandbox: &SandboxSpec,
        c: &ContainerSpec,
        cid: &str,
        hash: &str,
        image: &ResolvedImage,
    ) -> Result<(), SandboxError> {
        let netns = self.netns_path(&entity.id);
        let spec = build_runtime_spec(&RuntimeSpecInput {
            container_id: cid,
            namespace: self.containerd.namespace(),
            hostname: entity.id.name(),
            image: &image.config,
            container: c,
            netns: netns.as_deref(),
            extra_mounts: bind_mounts(
                &self.config.volume_root,
                entity.id.name(),
                &sandbox.volumes,
                c,
            )?,
        })
        .map_err(|source| SandboxError::Spec {
            container: c.name.clone(),
            source,
        })?;
        let revision = u64::try_from(entity.revision).unwrap_or(0);
        let mut labels = container_labels(&entity.id, &c.name, revision);
        labels.insert(LABEL_SPEC_HASH.to_string(), hash.to_string());
        self.containerd
            .create_container(&ContainerRequest {
                id: cid,
                image: &c.image,
                parent_snapshot: image.top_chain_id(),
                spec: &spec,
                labels,
            })
            .await
            .map_err(|e| SandboxError::containerd(&c.name, e))?;
        Ok(())
    }
}

/// The state and restart count the status last written gives `container`, if any.
fn last_status(entity: &Entity, container: &str) -> Option<(String, u32)> {
    let status: converge_watch::spec::SandboxStatus =
        serde_json::from_value(entity.status.clone()).ok()?;
    status
        .containers
        .into_iter()
        .find(|c| c.name == container)
        .map(|c| (c.state, c.restart_count))
}

/// How a container ended, for lifecycle events: `exited with code N`, or after an OOM kill
/// `OOM-killed (memory limit 8 MiB), exited with code 137`.
fn exit_text(code: Option<i64>, oom: Option<Option<u64>>) -> String {
    let code = code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
    match oom {
        None => format!("exited with code {code}"),
        Some(Some(limit)) => format!(
            "OOM-killed (memory limit {} MiB), exited with code {code}",
            limit / (1024 * 1024)
        ),
        Some(None) => format!("OOM-killed, exited with code {code}"),
    }
}

/// A delay as `300ms` / `2.5s`, rounded to milliseconds.
fn millis(d: Duration) -> String {
    format!(
        "{:?}",
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    )
}

/// The policy as the spec spells it.
fn policy_name(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
    }
}

/// True when the status last written says `container` was stopped because the spec asked
/// for it (so its exit is not one the restart policy should count).
fn was_stopped_on_request(entity: &Entity, container: &str) -> bool {
    entity.status["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == container && c["state"] == "stopped")
}
