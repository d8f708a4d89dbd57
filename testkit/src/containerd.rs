//! A private containerd for one test: own config, root, state and sockets in a temp dir; torn down without a trace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::cleanup::{kill_leftover_shims, kill_tasks, remove_cgroups, unmount_under};

/// How long `start` waits for the socket to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long teardown waits for containerd to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long teardown spends killing tasks through the API.
const TASK_CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Plugins a test containerd does not need (and which would touch host paths or slow start-up).
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

/// Why a private containerd could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// containerd exited before its socket answered.
    #[error("containerd exited during start-up ({status}); its log ends with:\n{log_tail}")]
    Exited {
        /// The exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The socket did not answer in time.
    #[error(
        "containerd did not answer on {socket} within {timeout:?}; its log ends with:\n{log_tail}"
    )]
    NotReady {
        /// The socket polled.
        socket: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// The last lines of its log.
        log_tail: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> TestkitError {
    let context = context.into();
    move |source| TestkitError::Io { context, source }
}

/// A containerd process private to one test. Its root, state, temp dir, gRPC and ttrpc
/// sockets and log all live in one fresh temp dir; the host's `/run/containerd` and
/// `/var/lib/containerd` are never used. Dropping it (or calling [`PrivateContainerd::stop`])
/// kills the tasks it runs, kills containerd, unmounts whatever is mounted under its dir
/// and removes the dir.
///
/// containerd 1.6's runc v2 shims put their sockets in the hard-coded `/run/containerd/s/`.
/// So that a test never writes there, containerd runs in a mount namespace of its own
/// (`unshare --mount --propagation slave`) with a tmpfs over `/run` and `<dir>/run-containerd`
/// bound onto `/run/containerd`; its shims inherit that namespace, and a restarted containerd
/// binds the same dir, so it finds the shims of the previous one. Mounts made later by the
/// test under [`PrivateContainerd::shared_dir`] (pinned network namespaces) propagate into
/// containerd's namespace, because that dir is a shared mount made before containerd starts.
#[derive(Debug)]
pub struct PrivateContainerd {
    dir: Option<TempDir>,
    path: PathBuf,
    child: Option<Child>,
}

impl PrivateContainerd {
    /// Writes a config into a fresh temp dir, starts `containerd --config` and waits until
    /// its gRPC socket answers a `Version` call. Fails with the tail of containerd's log when
    /// it exits early or does not answer within 20 s; nothing is left behind on failure.
    pub async fn start() -> Result<PrivateContainerd, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir()
            .map_err(io_err("create temp dir for containerd"))?;
        let path = dir.path().to_path_buf();
        for sub in ["root", "state", "tmp", "runc", "run-containerd", "shared"] {
            fs::create_dir_all(path.join(sub))
                .map_err(io_err(format!("create {}", path.join(sub).display())))?;
        }
        let config = config_toml(&path);
        fs::write(path.join("config.toml"), config).map_err(io_err("write containerd config"))?;
        let mut me = PrivateContainerd {
            dir: Some(dir),
            path,
            child: None,
        };
        // After `me` exists, so that a failure from here on is cleaned up by its drop.
        make_shared_mount(&me.shared_dir())?;
        me.spawn()?;
        me.wait_ready().await?;
        Ok(me)
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io_err("open containerd log"))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("clone containerd log handle"))?;
        // unshare execs sh, which execs containerd: the child's pid is containerd's.
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "slave",
                "--",
                "sh",
                "-c",
                PRIVATE_RUN_SCRIPT,
            ])
            .arg("sh")
            .arg(self.path.join("run-containerd"))
            .arg(self.path.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err("spawn containerd"))?;
        tracing::debug!(pid = child.id(), dir = %self.path.display(), "private containerd started");
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(TestkitError::Exited {
                    status: status.to_string(),
                    log_tail: self.log_tail(),
                });
            }
            if self.socket().exists() && version_answers(&self.socket()).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    socket: self.socket(),
                    timeout: START_TIMEOUT,
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gRPC socket (`<dir>/containerd.sock`).
    pub fn socket(&self) -> PathBuf {
        self.path.join("containerd.sock")
    }

    /// containerd's `root` (content, metadata, snapshots).
    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }

    /// containerd's `state` (task bundles, shim state).
    pub fn state(&self) -> PathBuf {
        self.path.join("state")
    }

    /// A private runc root to pass to tasks so runc state stays out of `/run/containerd/runc`.
    pub fn runc_root(&self) -> PathBuf {
        self.path.join("runc")
    }

    /// A dir whose later mounts containerd (and runc) see: put pinned network namespaces and
    /// any other mount a container must use under it.
    pub fn shared_dir(&self) -> PathBuf {
        self.path.join("shared")
    }

    /// The temp dir holding everything; tests may put logs or layouts under it.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// containerd's own stdout/stderr log.
    pub fn log_path(&self) -> PathBuf {
        self.path.join("containerd.log")
    }

    /// Stops containerd (SIGTERM, then SIGKILL) and starts it again on the same dirs, waiting
    /// until it answers. Running tasks survive (their shims are separate processes). For tests
    /// of reconnect behaviour.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill_containerd();
        // The old socket file may linger until the new process replaces it.
        let _ = fs::remove_file(self.socket());
        self.spawn()?;
        self.wait_ready().await
    }

    /// Tears everything down now: kills its tasks through the API, kills leftover shims and
    /// containerd by pid, unmounts what is mounted under its dir (deepest first, lazily when
    /// busy) and removes the dir. Fails only when the dir cannot be removed.
    pub async fn stop(mut self) -> Result<(), TestkitError> {
        let namespaces = if self.child.is_some() {
            tokio::time::timeout(TASK_CLEANUP_TIMEOUT, kill_tasks(self.socket()))
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.teardown(&namespaces)
    }

    fn teardown(&mut self, namespaces: &[String]) -> Result<(), TestkitError> {
        kill_leftover_shims(&self.state());
        self.kill_containerd();
        unmount_under(&self.path);
        remove_cgroups(namespaces);
        match self.dir.take() {
            Some(dir) => dir.close().map_err(io_err(format!(
                "remove containerd temp dir {}",
                self.path.display()
            ))),
            None => Ok(()),
        }
    }

    fn kill_containerd(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Ok(raw) = i32::try_from(child.id()) else {
            return;
        };
        let pid = Pid::from_raw(raw);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => break,
            }
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if self.dir.is_none() {
            return;
        }
        let mut namespaces = Vec::new();
        if self.child.is_some() {
            // Drop may run inside a runtime: do the async cleanup on a thread of its own.
            let socket = self.socket();
            let handle = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| {
                        rt.block_on(async {
                            tokio::time::timeout(TASK_CLEANUP_TIMEOUT, kill_tasks(socket))
                                .await
                                .unwrap_or_default()
                        })
                    })
                    .unwrap_or_default()
            });
            namespaces = handle.join().unwrap_or_default();
        }
        if let Err(err) = self.teardown(&namespaces) {
            tracing::warn!(error = %err, "private containerd teardown incomplete");
        }
    }
}

/// Run inside containerd's new mount namespace: hide the host's `/run` behind a tmpfs and
/// bind the instance's own dir onto `/run/containerd`, then become containerd.
const PRIVATE_RUN_SCRIPT: &str = "set -e; mount -t tmpfs -o mode=0755 converge-test-run /run; \
     mkdir -p /run/containerd; mount --bind \"$1\" /run/containerd; exec containerd --config \"$2\"";

/// Bind-mounts `dir` onto itself and marks it shared, so that mounts made under it later
/// propagate into mount namespaces created afterwards as its slaves.
fn make_shared_mount(dir: &Path) -> Result<(), TestkitError> {
    use nix::mount::{MsFlags, mount};
    let none: Option<&str> = None;
    mount(Some(dir), dir, none, MsFlags::MS_BIND, none)
        .map_err(|e| io_err(format!("bind-mount {}", dir.display()))(e.into()))?;
    mount(none, dir, none, MsFlags::MS_SHARED, none)
        .map_err(|e| io_err(format!("make {} a shared mount", dir.display()))(e.into()))
}

fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    let disabled = DISABLED_PLUGINS
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
temp = "{d}/tmp"
disabled_plugins = [{disabled}]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""
"#
    )
}

async fn version_answers(socket: &Path) -> bool {
    let Ok(channel) = containerd_client::connect(socket).await else {
        return false;
    };
    let mut client = containerd_client::services::v1::version_client::VersionClient::new(channel);
    client.version(()).await.is_ok()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_every_path_inside_the_temp_dir() {
        let cfg = config_toml(Path::new("/tmp/x"));
        assert!(!cfg.contains("/run/containerd"));
        assert!(!cfg.contains("/var/lib/containerd"));
        assert!(cfg.contains("io.containerd.grpc.v1.cri"));
    }
}
