//! Tasks of converge containers: start with file-backed output, status, wait, stop with grace, delete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, ListTasksRequest, StartRequest,
    WaitRequest,
};
use containerd_client::types::v1::Status as ProtoStatus;
use nix::sys::signal::Signal;
use prost::Message;
use prost_types::Any;

use super::client::ContainerdClient;
use super::error::{ContainerdError, StatusContext, found, ignore_not_found};

/// How long [`ContainerdClient::stop_task`] waits after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// runc shim options (`containerd.runc.v1.Options`); only the fields converge sets.
#[derive(Clone, PartialEq, Message)]
struct RuncOptions {
    /// runc's state root.
    #[prost(string, tag = "7")]
    root: String,
}

/// Where a task's output goes: files the shim itself appends to (so output survives a
/// controller restart). Paths must be absolute, or both a `binary://` logger URI made by
/// [`TaskIo::binary_logger`].
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

    /// Both streams through a containerd binary logger: the shim runs `program` with the
    /// query `args` as `key value` argument pairs (in no particular order), stdout on fd 3,
    /// stderr on fd 4 and a ready pipe on fd 5. The URI is carried in both paths; it is
    /// passed to containerd as is. Fails when `program` is not an absolute UTF-8 path.
    pub fn binary_logger(program: &Path, args: &[(&str, &str)]) -> Result<Self, ContainerdError> {
        let op = "build binary logger URI";
        let invalid = |m: String| ContainerdError::invalid(op, m);
        let program = program
            .to_str()
            .filter(|_| program.is_absolute())
            .ok_or_else(|| {
                invalid(format!(
                    "{} is not an absolute UTF-8 path",
                    program.display()
                ))
            })?;
        let mut uri = reqwest::Url::parse("binary:///").map_err(|e| invalid(e.to_string()))?;
        uri.set_path(program);
        if !args.is_empty() {
            uri.query_pairs_mut().extend_pairs(args);
        }
        let uri = PathBuf::from(uri.as_str());
        Ok(TaskIo {
            stdout: uri.clone(),
            stderr: uri,
        })
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
    if let Some(uri) = path.to_str().filter(|s| s.starts_with("binary://")) {
        return Ok(uri.to_string());
    }
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
        crate::sandbox::fault::fault_point(crate::sandbox::fault::FaultStep::TaskCreated);
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
        // Wait from before the signal, so the exit cannot slip by unseen.
        let waiter = {
            let client = self.clone();
            let id = id.to_string();
            tokio::spawn(async move { client.wait_task(&id).await })
        };
        let _abort_waiter = AbortOnDrop(waiter.abort_handle());
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
}

/// Aborts a spawned task when dropped (so an early return leaves no wait pending).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
