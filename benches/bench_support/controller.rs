//! The controller under a bench: in the bench process (`run_controller`), or `converge controller` as a child process so its CPU time and memory can be read from `/proc/<pid>` apart from the bench's own.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use converge::daemon::controller::run_controller;
use converge::daemon::flags::DaemonConfig;
use converge_reconcilers::containerd::ContainerdClient;
use converge_testkit::PrivateContainerd;
use converge_watch::ServerAddress;
use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::net::BenchNetwork;

/// `converge controller` as a child process; killed on drop if not stopped.
pub struct ControllerProcess {
    child: Child,
}

impl ControllerProcess {
    /// Starts `bin controller` on `server`, containerd `ctrd` in `containerd`'s namespace,
    /// single node `bench-node`, `workers` workers, stop grace 100 ms, sandbox networking on
    /// `net`; output goes to `<data_dir>/controller.log`. Fails when it cannot be spawned.
    pub fn spawn(
        bin: &str,
        ctrd: &PrivateContainerd,
        containerd: &ContainerdClient,
        server: &ServerAddress,
        data_dir: &Path,
        net: &BenchNetwork,
        workers: usize,
    ) -> Result<Self, BenchError> {
        let log = std::fs::File::create(data_dir.join("controller.log"))?;
        let child = Command::new(bin)
            .arg("controller")
            .arg("--server")
            .arg(server.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--containerd-socket")
            .arg(ctrd.socket())
            .arg("--containerd-root")
            .arg(ctrd.dir())
            .args(["--namespace", containerd.namespace()])
            .args(["--node-id", "bench-node", "--single-node"])
            .arg("--runc-root")
            .arg(ctrd.runc_root())
            .args(["--workers", &workers.to_string()])
            .args(["--stop-grace", "100ms"])
            .args(["--registry-url", "http://127.0.0.1:9"])
            .args(net.flags())
            .env_remove("CONVERGE_SERVER")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(ControllerProcess { child })
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits up to 20 s (SIGKILL after that).
    pub fn stop(mut self) -> Result<(), BenchError> {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A controller running in this process until [`InProcessController::stop`].
pub struct InProcessController {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessController {
    /// Runs the controller with `config` against `server` until `parent` is cancelled or
    /// [`InProcessController::stop`]; a controller that fails prints why.
    pub fn start(
        config: DaemonConfig,
        server: &ServerAddress,
        parent: &CancellationToken,
    ) -> InProcessController {
        let stop = parent.child_token();
        let server = server.clone();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = run_controller(config, server, "http://127.0.0.1:9", token).await {
                eprintln!("controller failed: {e}");
            }
        });
        InProcessController { stop, task }
    }

    /// Cancels it and waits (20 s at most) until it has stopped.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}
