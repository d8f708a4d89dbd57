//! `converge up` runs the service controller beside its entity server: for real it writes a
//! service's endpoints (a sandbox of another node, its status written here as that node's
//! controller would); with `--dry-run` the status write is planned and not made.

mod sandbox_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use converge_testkit::{PrivateContainerd, unique_name};
use converge_watch::{EntityClient, EntityId};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sandbox_support::connect;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_converge");

/// A `converge up` child process; stopped by its pid (SIGTERM, then SIGKILL) on drop.
struct UpProcess {
    child: Child,
    /// Its stderr lines.
    log: mpsc::Receiver<String>,
}

impl UpProcess {
    fn start(ctrd: &PrivateContainerd, data: &Path, dry_run: bool) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(data)
            .arg("--containerd-socket")
            .arg(ctrd.socket())
            .args(["--namespace", &unique_name("svc"), "--node-id", "node-a"])
            .args([
                "--registry",
                "127.0.0.1:0",
                "--resync",
                "1s",
                "--host-network",
            ])
            .arg("--runc-root")
            .arg(ctrd.runc_root())
            .env_remove("CONVERGE_SERVER")
            .env("RUST_LOG", "warn,converge_reconcilers::engine::plan=debug")
            .env("CONVERGE_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if dry_run {
            cmd.arg("--dry-run");
        }
        let mut child = cmd.spawn().expect("spawn converge up");
        let (tx, log) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        UpProcess { child, log }
    }

    /// Waits (30 s at most) for a log line containing every one of `needles`.
    fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("converge up never logged a line with {needles:?}");
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        if let Ok(raw) = i32::try_from(self.child.id()) {
            let pid = Pid::from_raw(raw);
            let _ = kill(pid, Signal::SIGTERM);
            for _ in 0..200 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn id(s: &str) -> EntityId {
    s.parse().expect("id")
}

/// Creates `service/web` and a running sandbox on `node-b` (not this node, so this
/// controller leaves it alone) with its status as node-b's controller would write it.
async fn service_and_remote_sandbox(client: &EntityClient) -> i64 {
    let service = client
        .put(
            &id("service/web"),
            &json!({"selector": {"app": "web"}, "port": 8080}),
            None,
        )
        .await
        .expect("put service");
    let sandbox = id("sandbox/remote");
    let put = client
        .put(
            &sandbox,
            &json!({"node": "node-b", "labels": {"app": "web"},
                    "containers": [{"name": "c", "image": "busybox",
                                    "ports": [{"port": 8080}]}]}),
            None,
        )
        .await
        .expect("put sandbox");
    client
        .patch_status(
            &sandbox,
            &json!({"phase": "running", "ip": "10.88.3.4"}),
            put.revision,
        )
        .await
        .expect("sandbox status");
    service.revision
}

async fn service_status(client: &EntityClient) -> (i64, Value) {
    let e = client
        .get(&id("service/web"))
        .await
        .expect("get")
        .expect("service exists");
    (e.revision, e.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_writes_the_endpoints_of_a_service_over_a_sandbox_of_another_node() {
    let ctrd = PrivateContainerd::start().await.expect("containerd");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _up = UpProcess::start(&ctrd, &data, false);
    let server = format!("unix:{}", data.join("entity.sock").display())
        .parse()
        .expect("address");
    let client = connect(&server).await;
    service_and_remote_sandbox(&client).await;
    let mut last = Value::Null;
    for _ in 0..600 {
        last = service_status(&client).await.1;
        if last["endpoints"][0]["address"] == "10.88.3.4:8080" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last["endpoints"],
        json!([{"ip": "10.88.3.4", "port": 8080, "address": "10.88.3.4:8080",
                "node": "node-b", "sandbox": "sandbox/remote"}]),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_in_dry_run_plans_the_service_status_write_and_makes_none() {
    let ctrd = PrivateContainerd::start().await.expect("containerd");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let up = UpProcess::start(&ctrd, &data, true);
    let server = format!("unix:{}", data.join("entity.sock").display())
        .parse()
        .expect("address");
    let client = connect(&server).await;
    let revision = service_and_remote_sandbox(&client).await;
    up.wait_for_log(&["planned", "service/web/status"]);
    let (now, status) = service_status(&client).await;
    assert_eq!(now, revision, "no status written: {status}");
    assert_eq!(status, json!({}), "no status written");
}
