//! Container lifecycle on containerd: create (record then snapshot), start, status, stop, delete, list — all idempotent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest,
    ListTasksRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as ProtoStatus;
use converge_watch::entity::EntityId;
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;
use prost::Message;
use prost_types::Any;

use super::client::{ContainerdClient, SNAPSHOTTER};
use super::error::{ContainerdError, StatusContext, found, ignore_not_found};
use super::ids::{
    LABEL_CONTAINER_NAME, LABEL_ENTITY_ID, LABEL_SANDBOX_REVISION, is_valid_identifier,
};

/// The runtime every converge container uses.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// Type URL of a runtime spec stored on a container record.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// How long [`ContainerdClient::stop_task`] waits after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// runc shim options (`containerd.runc.v1.Options`); only the fields converge sets.
#[derive(Clone, PartialEq, Message)]
struct RuncOptions {
    /// runc's state root.
    #[prost(string, tag = "7")]
    root: String,
}

/// The labels of a converge container: owner entity id (Contract), container name, and
/// the sandbox revision it was created from.
pub fn container_labels(
    owner: &EntityId,
    container: &str,
    revision: u64,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_ENTITY_ID.to_string(), owner.to_string()),
        (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
        (LABEL_SANDBOX_REVISION.to_string(), revision.to_string()),
    ])
}

/// What to create.
#[derive(Debug, Clone)]
pub struct ContainerRequest<'a> {
    /// containerd id (see [`super::container_id`]); also the snapshot key.
    pub id: &'a str,
    /// Image record name (kept on the container so GC keeps the image's content).
    pub image: &'a str,
    /// Committed snapshot the rootfs is prepared on (the image's top chain id).
    pub parent_snapshot: &'a str,
    /// The runtime spec.
    pub spec: &'a Spec,
    /// Labels (see [`container_labels`]).
    pub labels: HashMap<String, String>,
}

/// A container record as containerd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// containerd id.
    pub id: String,
    /// Image name.
    pub image: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Snapshot key of its rootfs.
    pub snapshot_key: String,
}

impl From<Container> for ContainerRecord {
    fn from(c: Container) -> Self {
        ContainerRecord {
            id: c.id,
            image: c.image,
            labels: c.labels,
            snapshot_key: c.snapshot_key,
        }
    }
}

/// Where a task's output goes: files the shim itself appends to (so output survives a
/// controller restart). Paths must be absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIo {
    /// stdout file.
    pub stdout: PathBuf,
    /// stderr file.
    pub stderr: PathBuf,
}

impl TaskIo {
    /// Both streams into `<dir>/<container_id>.log` (interleaved as written).
    pub fn log_file(dir: &Path, container_id: &str) -> Self {
        let path = dir.join(format!("{container_id}.log"));
        TaskIo {
            stdout: path.clone(),
            stderr: path,
        }
    }
}

/// Run state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited; `exit_code` is set.
    Stopped,
    /// Paused (converge never pauses; seen only if someone else did).
    Paused,
    /// Anything else.
    Unknown,
}

/// A task's observed status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    /// The container.
    pub container_id: String,
    /// Init pid (0 once reaped).
    pub pid: u32,
    /// Run state.
    pub state: TaskState,
    /// Exit status once stopped (128 + signal when killed).
    pub exit_code: Option<u32>,
}

impl From<containerd_client::types::v1::Process> for TaskStatus {
    fn from(p: containerd_client::types::v1::Process) -> Self {
        let state = match ProtoStatus::try_from(p.status) {
            Ok(ProtoStatus::Created) => TaskState::Created,
            Ok(ProtoStatus::Running) => TaskState::Running,
            Ok(ProtoStatus::Stopped) => TaskState::Stopped,
            Ok(ProtoStatus::Paused) | Ok(ProtoStatus::Pausing) => TaskState::Paused,
            _ => TaskState::Unknown,
        };
        TaskStatus {
            container_id: if p.container_id.is_empty() {
                p.id
            } else {
                p.container_id
            },
            pid: p.pid,
            state,
            exit_code: (state == TaskState::Stopped).then_some(p.exit_status),
        }
    }
}

fn file_uri(op: &str, path: &Path) -> Result<String, ContainerdError> {
    if !path.is_absolute() {
        return Err(ContainerdError::invalid(
            op,
            format!("log path {} is not absolute", path.display()),
        ));
    }
    let s = path
        .to_str()
        .ok_or_else(|| ContainerdError::invalid(op, "log path is not UTF-8"))?;
    Ok(format!("file://{s}"))
}

impl ContainerdClient {
    /// Creates container `req.id` — the record first (runtime runc v2, overlayfs, snapshot
    /// key = id, spec as JSON), then its rootfs snapshot on `req.parent_snapshot` — so GC can
    /// never take the snapshot. Idempotent: an existing record is returned as it is (compare
    /// its labels to decide on replacement) and an existing snapshot is kept. When the
    /// snapshot cannot be prepared, a record created by this call is deleted again.
    pub async fn create_container(
        &self,
        req: &ContainerRequest<'_>,
    ) -> Result<ContainerRecord, ContainerdError> {
        let op = format!("create container {}", req.id);
        if !is_valid_identifier(req.id) {
            return Err(ContainerdError::invalid(
                op,
                "not a valid containerd identifier",
            ));
        }
        let spec_json = serde_json::to_vec(req.spec).map_err(|e| {
            ContainerdError::invalid(op.clone(), format!("spec does not serialize: {e}"))
        })?;
        let container = Container {
            id: req.id.to_string(),
            labels: req.labels.clone(),
            image: req.image.to_string(),
            runtime: Some(Runtime {
                name: RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.to_string(),
            snapshot_key: req.id.to_string(),
            ..Default::default()
        };
        let created = self
            .containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .op(|| op.clone());
        let (record, created_now) = match created {
            Ok(resp) => match resp.into_inner().container {
                Some(c) => (ContainerRecord::from(c), true),
                None => {
                    return Err(ContainerdError::bad_data(
                        op,
                        "containerd returned no container",
                    ));
                }
            },
            Err(e) if e.is_already_exists() => match self.get_container(req.id).await? {
                Some(existing) => (existing, false),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let labels = HashMap::from([(
            LABEL_ENTITY_ID.to_string(),
            req.labels.get(LABEL_ENTITY_ID).cloned().unwrap_or_default(),
        )]);
        match self
            .prepare_snapshot(req.id, req.parent_snapshot, labels, None)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                if created_now {
                    let _ = self.delete_container_record(req.id).await;
                }
                return Err(e);
            }
        }
        tracing::debug!(container = req.id, "container created");
        Ok(record)
    }

    /// Container `id`, or `None`.
    pub async fn get_container(
        &self,
        id: &str,
    ) -> Result<Option<ContainerRecord>, ContainerdError> {
        let resp = found(
            self.containers()
                .get(self.request(GetContainerRequest { id: id.to_string() }))
                .await
                .op(|| format!("get container {id}")),
        )?;
        Ok(resp
            .and_then(|r| r.into_inner().container)
            .map(ContainerRecord::from))
    }

    /// Containers whose labels include every `(key, value)` of `labels` (all when empty).
    pub async fn list_containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerRecord>, ContainerdError> {
        let filter = labels
            .iter()
            .map(|(k, v)| {
                format!(
                    "labels.\"{}\"==\"{}\"",
                    k.replace('"', "\\\""),
                    v.replace('"', "\\\"")
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let filters = if filter.is_empty() {
            Vec::new()
        } else {
            vec![filter]
        };
        let resp = self
            .containers()
            .list(self.request(ListContainersRequest { filters }))
            .await
            .op(|| "list containers".to_string())?;
        Ok(resp
            .into_inner()
            .containers
            .into_iter()
            .map(ContainerRecord::from)
            .collect())
    }

    /// Status of the task of container `id`, or `None` when it has no task.
    pub async fn task_status(&self, id: &str) -> Result<Option<TaskStatus>, ContainerdError> {
        let resp = found(
            self.tasks()
                .get(self.request(GetRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                }))
                .await
                .op(|| format!("get task {id}")),
        )?;
        Ok(resp
            .and_then(|r| r.into_inner().process)
            .map(TaskStatus::from))
    }

    /// Every task of the namespace.
    pub async fn list_tasks(&self) -> Result<Vec<TaskStatus>, ContainerdError> {
        let resp = self
            .tasks()
            .list(self.request(ListTasksRequest::default()))
            .await
            .op(|| "list tasks".to_string())?;
        Ok(resp
            .into_inner()
            .tasks
            .into_iter()
            .map(TaskStatus::from)
            .collect())
    }

    /// Makes container `id` run: creates its task on the snapshot's mounts with stdout and
    /// stderr going to `io` (as `file://` URIs) and starts it. Idempotent: a running task is
    /// left alone, a created one is started, a stopped one is deleted and created afresh.
    /// When runc cannot start the process (e.g. the command does not exist) the error carries
    /// runc's message and no task is left behind.
    pub async fn start_task(&self, id: &str, io: &TaskIo) -> Result<TaskStatus, ContainerdError> {
        let op = format!("start task {id}");
        let stdout = file_uri(&op, &io.stdout)?;
        let stderr = file_uri(&op, &io.stderr)?;
        match self.task_status(id).await? {
            Some(s) if s.state == TaskState::Running => return Ok(s),
            Some(s) if s.state == TaskState::Created => return self.start_created(id).await,
            Some(_) => {
                self.delete_task(id).await?;
            }
            None => {}
        }
        let rootfs = self.snapshot_mounts(id).await?;
        let options = self.runc_root().map(|root| Any {
            type_url: "containerd.runc.v1.Options".to_string(),
            value: RuncOptions {
                root: root.display().to_string(),
            }
            .encode_to_vec(),
        });
        let created = self
            .tasks()
            .create(self.request(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdout,
                stderr,
                terminal: false,
                options,
                ..Default::default()
            }))
            .await
            .op(|| format!("create task {id}"));
        match created {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        self.start_created(id).await
    }

    async fn start_created(&self, id: &str) -> Result<TaskStatus, ContainerdError> {
        let started = self
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .op(|| format!("start task {id}"));
        match started {
            Ok(resp) => {
                let pid = resp.into_inner().pid;
                tracing::debug!(container = id, pid, "task started");
                Ok(TaskStatus {
                    container_id: id.to_string(),
                    pid,
                    state: TaskState::Running,
                    exit_code: None,
                })
            }
            Err(e) => {
                if let Err(cleanup) = self.delete_task(id).await {
                    tracing::warn!(container = id, error = %cleanup, "could not delete task that failed to start");
                }
                Err(e)
            }
        }
    }

    /// Waits until the task of container `id` exits; returns its exit status.
    pub async fn wait_task(&self, id: &str) -> Result<u32, ContainerdError> {
        let resp = self
            .tasks()
            .wait(self.request(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .op(|| format!("wait for task {id}"))?;
        Ok(resp.into_inner().exit_status)
    }

    async fn kill_task(&self, id: &str, signal: u32, all: bool) -> Result<(), ContainerdError> {
        ignore_not_found(
            self.tasks()
                .kill(self.request(KillRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                    signal,
                    all,
                }))
                .await
                .map(|_| ())
                .op(|| format!("signal {signal} to task {id}")),
        )
    }

    /// Stops the task of container `id`: SIGTERM, then SIGKILL to all its processes once
    /// `grace` passes, waiting for the exit either way. Returns the exit status, or `None`
    /// when there is no task. A task already stopped just reports its status.
    pub async fn stop_task(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<Option<u32>, ContainerdError> {
        let Some(status) = self.task_status(id).await? else {
            return Ok(None);
        };
        if status.state == TaskState::Stopped {
            return Ok(status.exit_code);
        }
        let waiter = {
            let client = self.clone();
            let id = id.to_string();
            tokio::spawn(async move { client.wait_task(&id).await })
        };
        let mut waiter = std::pin::pin!(waiter);
        self.kill_task(id, Signal::SIGTERM as u32, false).await?;
        let joined = match tokio::time::timeout(grace, &mut waiter).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::info!(container = id, ?grace, "task ignored SIGTERM; killing it");
                self.kill_task(id, Signal::SIGKILL as u32, true).await?;
                tokio::time::timeout(KILL_WAIT, &mut waiter)
                    .await
                    .map_err(|_| ContainerdError::Unavailable {
                        operation: format!("stop task {id}"),
                        message: format!("no exit {KILL_WAIT:?} after SIGKILL"),
                    })?
            }
        };
        let exit = joined
            .map_err(|e| ContainerdError::bad_data(format!("stop task {id}"), e.to_string()))??;
        Ok(Some(exit))
    }

    /// Deletes the (stopped) task of container `id`, returning its exit status; `None`
    /// when there was none. Fails with `FailedPrecondition` while it runs.
    pub async fn delete_task(&self, id: &str) -> Result<Option<u32>, ContainerdError> {
        let resp = found(
            self.tasks()
                .delete(self.request(DeleteTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
                .op(|| format!("delete task {id}")),
        )?;
        Ok(resp.map(|r| r.into_inner().exit_status))
    }

    async fn delete_container_record(&self, id: &str) -> Result<(), ContainerdError> {
        ignore_not_found(
            self.containers()
                .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
                .await
                .map(|_| ())
                .op(|| format!("delete container {id}")),
        )
    }

    /// Removes container `id` entirely: stops its task (SIGTERM, `grace`, SIGKILL), deletes
    /// the task, the container record and its snapshot. Each missing piece counts as done,
    /// so this is safe to repeat after a crash part-way.
    pub async fn remove_container(&self, id: &str, grace: Duration) -> Result<(), ContainerdError> {
        self.stop_task(id, grace).await?;
        self.delete_task(id).await?;
        self.delete_container_record(id).await?;
        self.remove_snapshot(id).await?;
        tracing::debug!(container = id, "container removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_watch::entity::Kind;

    #[test]
    fn labels_carry_the_owner_contract_label() {
        let owner = EntityId::new(Kind::Sandbox, "web").expect("id");
        let labels = container_labels(&owner, "app", 7);
        assert_eq!(
            labels.get("runtime.computer/entity-id").map(String::as_str),
            Some("sandbox/web")
        );
        assert_eq!(
            labels.get(LABEL_SANDBOX_REVISION).map(String::as_str),
            Some("7")
        );
    }

    #[test]
    fn log_paths_must_be_absolute() {
        assert!(file_uri("t", Path::new("relative.log")).is_err());
        assert_eq!(
            file_uri("t", Path::new("/l/a.log")).expect("uri"),
            "file:///l/a.log"
        );
    }

    #[test]
    fn runc_options_encode_root_as_field_seven() {
        let bytes = RuncOptions { root: "/r".into() }.encode_to_vec();
        assert_eq!(bytes, vec![0x3a, 2, b'/', b'r']);
    }
}
