//! Shared set-up of the crash and adoption tests: `converge controller` as a child process
//! (optionally armed with `CONVERGE_FAULT_AT`) against `sandbox_support`'s in-process
//! server and private containerd, on the test's own bridge and subnet, plus the leak checks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use converge_reconcilers::containerd::SnapshotKind;
use converge_reconcilers::network::{Ipam, network_name};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::sandbox_support::{Env, IMAGE, NO_REGISTRY, NODE, sandbox_id};

/// The binary under test (a debug build, so it carries the fault hook).
const BIN: &str = env!("CARGO_BIN_EXE_converge");
/// How long a controller gets to reach a fault and abort.
const ABORT_WITHIN: Duration = Duration::from_secs(40);

/// A bridge and subnet of this test only (`10.199.<octet>.0/24`); dropping it deletes the
/// bridge.
pub struct CrashNetwork {
    /// `cvc` + 8 hex digits.
    pub bridge: String,
    /// `10.199.<octet>.0/24`.
    pub subnet: String,
}

impl CrashNetwork {
    /// A bridge name no other test uses, on subnet `10.199.<octet>.0/24` (the caller picks
    /// an octet no other test uses). Nothing is created yet.
    pub fn new(octet: u8) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(converge_testkit::unique_name("crash"));
        CrashNetwork {
            bridge: format!("cvc{:08x}", seed as u32),
            subnet: format!("10.199.{octet}.0/24"),
        }
    }
}

impl Drop for CrashNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A running `converge controller` child; dropping it SIGKILLs it (by its pid) and reaps it.
pub struct ControllerProcess {
    child: Option<Child>,
}

impl ControllerProcess {
    /// The child's pid.
    pub fn pid(&self) -> Pid {
        let id = self.child.as_ref().map_or(0, Child::id);
        Pid::from_raw(i32::try_from(id).expect("pid fits"))
    }

    /// Waits until the child exits (at most [`ABORT_WITHIN`]); returns how it ended.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + ABORT_WITHIN;
        let child = self.child.as_mut().expect("child");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the controller did not exit within {ABORT_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the abort the fault hook causes, failing the test on any other exit.
    pub async fn wait_abort(&mut self, step: &str) {
        let status = self.wait_exit().await;
        assert_eq!(
            status.signal(),
            Some(Signal::SIGABRT as i32),
            "the controller should abort at {step}, got {status}"
        );
    }

    /// Kills the child with SIGKILL (a crash outside any named step) and reaps it.
    pub async fn kill(&mut self) {
        if self.child.is_some() {
            kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
            self.wait_exit().await;
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// One crash test's world: [`Env`] plus its network and the controller's run dir.
pub struct CrashEnv {
    pub env: Env,
    pub net: CrashNetwork,
    /// `--run-dir` (under containerd's shared dir, so runc sees the pins).
    pub run_dir: PathBuf,
    /// Where the child's stderr goes (shown when a test fails).
    log: PathBuf,
}

impl CrashEnv {
    /// A private containerd with busybox, the in-process entity server, and a network on
    /// `10.199.<octet>.0/24`.
    pub async fn start(octet: u8) -> CrashEnv {
        let env = Env::start().await;
        let run_dir = env.ctrd.shared_dir().join("run");
        let log = env.data_dir.join("controller.stderr");
        CrashEnv {
            env,
            net: CrashNetwork::new(octet),
            run_dir,
            log,
        }
    }

    /// Starts `converge controller`, aborting at `fault` when given.
    pub fn controller(&self, fault: Option<&str>) -> ControllerProcess {
        self.controller_with(fault, &[])
    }

    /// [`CrashEnv::controller`] with `extra` flags.
    pub fn controller_with(&self, fault: Option<&str>, extra: &[&str]) -> ControllerProcess {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("controller log");
        let env = &self.env;
        let mut cmd = Command::new(BIN);
        cmd.arg("controller")
            .arg("--data-dir")
            .arg(&env.data_dir)
            .arg("--containerd-socket")
            .arg(env.ctrd.socket())
            .args(["--namespace", env.containerd.namespace()])
            .args(["--node-id", NODE, "--single-node"])
            .arg("--runc-root")
            .arg(env.ctrd.runc_root())
            .args(["--bridge", &self.net.bridge, "--subnet", &self.net.subnet])
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(["--registry-url", NO_REGISTRY])
            .args(["--resync", "2s", "--workers", "2"])
            .args(["--stop-grace", "500ms", "--restart-backoff", "300ms"])
            .args(extra)
            .env("CONVERGE_SERVER", env.server.to_string())
            .env("RUST_LOG", "info")
            .env_remove("CONVERGE_FAULT_AT")
            .current_dir(&env.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(step) = fault {
            cmd.env("CONVERGE_FAULT_AT", step);
        }
        let child = cmd.spawn().expect("spawn converge controller");
        ControllerProcess { child: Some(child) }
    }

    /// The controller's stderr so far (for failure messages).
    pub fn controller_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Polls the sandbox's status until it is `running` with an address (at most 60 s);
    /// returns the address.
    pub async fn wait_running(&self, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.env.status(name).await;
            if status["phase"] == "running"
                && let Some(ip) = status["ip"].as_str()
            {
                return ip.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "sandbox {name} never ran; status {status}\ncontroller:\n{}",
                self.controller_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `http://<ip>:8080/` serves `body` (at most 30 s).
    pub async fn wait_page(&self, ip: &str, body: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            let addr = ip.to_string();
            last = tokio::task::spawn_blocking(move || fetch(&addr))
                .await
                .expect("fetch task")
                .unwrap_or_else(|e| e.to_string());
            if last.contains(body) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{ip}:8080 never served {body:?}; last answer: {last}");
    }

    /// Everything sandbox `name` could leave behind, as readable lines; empty when clean.
    pub async fn leaks(&self, name: &str) -> Vec<String> {
        let env = &self.env;
        let id = sandbox_id(name).to_string();
        let net = network_name(&id);
        let mut leaks = Vec::new();
        let containers = env.containerd.list_containers(&[]).await.expect("list");
        leaks.extend(
            containers
                .into_iter()
                .map(|c| format!("container {}", c.id)),
        );
        let tasks = env.containerd.list_tasks().await.expect("tasks");
        leaks.extend(
            tasks
                .into_iter()
                .map(|t| format!("task {}", t.container_id)),
        );
        let snapshots = env.containerd.list_snapshots().await.expect("snapshots");
        leaks.extend(
            snapshots
                .into_iter()
                .filter(|s| s.kind != SnapshotKind::Committed)
                .map(|s| format!("snapshot {}", s.name)),
        );
        let pin = self.run_dir.join("netns").join(&net);
        if pin.exists() {
            leaks.push(format!("netns pin {}", pin.display()));
        }
        if Path::new("/sys/class/net").join(&net).exists() {
            leaks.push(format!("veth {net}"));
        }
        let subnet = self.net.subnet.parse().expect("subnet");
        let allocations = Ipam::open(&env.data_dir, subnet)
            .expect("ipam file readable")
            .allocations();
        leaks.extend(allocations.iter().map(|(s, ip)| format!("ip {ip} of {s}")));
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        for root in [&env.data_dir, &self.run_dir] {
            let root = root.display().to_string();
            leaks.extend(
                mountinfo
                    .lines()
                    .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&root)))
                    .map(|l| format!("mount {l}")),
            );
        }
        for dir in ["volumes", "logs"] {
            let path = env.data_dir.join(dir).join(name);
            if path.exists() {
                leaks.push(format!("{dir} dir {}", path.display()));
            }
        }
        leaks
    }

    /// Polls until sandbox `name` left nothing behind (at most 45 s).
    pub async fn wait_clean(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let leaks = self.leaks(name).await;
            if leaks.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox {name} leaked:\n  {}\ncontroller:\n{}",
                leaks.join("\n  "),
                self.controller_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes sandbox `name`.
    pub async fn delete(&self, name: &str) {
        self.env
            .client
            .delete(&sandbox_id(name), None)
            .await
            .expect("delete sandbox");
    }
}

/// What the web page of [`web_sandbox`] says.
pub const PAGE: &str = "converged-after-crash";

/// Two containers sharing a volume: `side` writes the page into it, `web` serves it with
/// busybox httpd on port 8080.
pub fn web_sandbox() -> Value {
    json!({
        "state": "running",
        "restart": "always",
        "volumes": [{"name": "data"}],
        "containers": [
            {
                "name": "web",
                "image": IMAGE,
                "command": ["httpd", "-f", "-p", "8080", "-h", "/data"],
                "ports": [{"port": 8080, "name": "http"}],
                "mounts": [{"volume": "data", "path": "/data"}]
            },
            {
                "name": "side",
                "image": IMAGE,
                "command": ["sh", "-c", format!("echo {PAGE} > /data/index.html; exec sleep 100000")],
                "mounts": [{"volume": "data", "path": "/data"}]
            }
        ]
    })
}

/// Fetches `/` from `ip:8080` with a plain HTTP/1.0 GET; returns the whole response.
fn fetch(ip: &str) -> std::io::Result<String> {
    let addr: SocketAddr = format!("{ip}:8080")
        .parse()
        .map_err(std::io::Error::other)?;
    converge_testkit::http_get(addr, ip)
}
