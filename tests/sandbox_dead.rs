//! Dead sandboxes with a real containerd: a restart-never sandbox whose command exits becomes
//! `dead`; the orphan pass removes its container and the sandbox reconciler does not make
//! it again (its network is released); a spec change, or `state: stopped` then `running`,
//! revives it; a lagging cache cannot bring a removed container back; and `converge up` with
//! a tiny horizon deletes a sandbox that died by itself and leaves nothing behind.

mod sandbox_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use converge::daemon::controller::sandbox_config;
use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::engine::{Context, Executor, Reconciler, WriteTracker};
use converge_reconcilers::sandbox::SandboxReconciler;
use converge_watch::StreamEvent;
use converge_watch::cache::Cache;

use converge_reconcilers::containerd::{
    ContainerdClient, LABEL_ENTITY_ID, TaskState, container_id, import_oci_layout,
};
use converge_reconcilers::logs::LifecycleLog;
use converge_reconcilers::network::network_name;
use converge_testkit::{PrivateContainerd, busybox_image_layout, unique_name};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sandbox_support::{Env, IMAGE, NO_REGISTRY, connect, sandbox_id};
use serde_json::{Value, json};

fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or("")
}

/// A restart-never sandbox with one container running `script`.
fn once(script: &str) -> Value {
    json!({"restart": "never",
           "containers": [{"name": "app", "image": IMAGE, "command": ["sh", "-c", script]}]})
}

/// Exits 3 the first time it runs in its container, then sleeps: the rootfs (and so
/// `/ran`) survives a start of the same container, not a new container.
const FIRST_RUN_FAILS: &str = "if [ -f /ran ]; then exec sleep 300; fi; touch /ran; exit 3";

/// Several resyncs (1 s each) and orphan passes of the test controller.
const A_FEW_RESYNCS: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sandbox_loses_its_container_to_the_orphan_pass_and_stays_dead_until_its_spec_changes()
 {
    let mut env = Env::start().await;
    let mut config = env.network_config(false);
    config.collectors.orphan_grace = Duration::from_millis(500);
    config.resync = Duration::from_secs(1);
    env.start_controller_with(config);
    let name = unique_name("dead");
    env.apply(&name, once("exit 3")).await;
    let status = env
        .wait_status(&name, "phase dead", |s| phase(s) == "dead")
        .await;
    assert_eq!(status["containers"][0]["exit_code"], 3, "{status}");
    assert_eq!(
        status["message"],
        "container app exited with code 3 and its restart policy does not restart it"
    );

    // The orphan pass removes the container of the dead sandbox; the reconciler reports it
    // removed, keeps its exit code and releases the network.
    let status = env
        .wait_status(&name, "container removed and address released", |s| {
            s["containers"][0]["state"] == "removed" && s.get("ip").is_none()
        })
        .await;
    assert_eq!(phase(&status), "dead", "{status}");
    assert_eq!(status["containers"][0]["exit_code"], 3, "{status}");
    assert_network_released(&env, &name).await;

    // Nothing comes back over several resyncs and orphan passes.
    tokio::time::sleep(A_FEW_RESYNCS).await;
    assert!(env.containers_of(&name).await.is_empty(), "not recreated");
    let later = env.status(&name).await;
    assert_eq!(later, status, "the dead status stays as it was");
    assert!(
        events(&env, &name)
            .iter()
            .filter(|e| e.contains("created: image"))
            .count()
            == 1,
        "{:#?}",
        events(&env, &name)
    );

    // A spec change revives it.
    env.apply(&name, once("exec sleep 300")).await;
    let status = env
        .wait_status(&name, "revived and running", |s| {
            phase(s) == "running" && s["ip"].is_string()
        })
        .await;
    assert_eq!(status["containers"][0]["state"], "running", "{status}");
    assert_eq!(env.containers_of(&name).await.len(), 1);
    let log = events(&env, &name);
    assert_eq!(
        log.iter()
            .filter(|e| e.contains(&format!("{name} dead: container app")))
            .count(),
        1,
        "the death is recorded once: {log:#?}"
    );

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    env.eventually("the revived sandbox is torn down", || async {
        env.containers_of(&name).await.is_empty()
    })
    .await;
    assert_network_released(&env, &name).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_that_keeps_the_container_starts_the_dead_one_again() {
    let mut env = Env::start().await;
    let mut config = env.config(false);
    config.resync = Duration::from_secs(1);
    env.start_controller_with(config);
    let name = unique_name("lazarus");
    env.apply(&name, once(FIRST_RUN_FAILS)).await;
    env.wait_status(&name, "phase dead", |s| phase(s) == "dead")
        .await;
    // Within the orphan grace (default minutes) the exited container stays, untouched.
    tokio::time::sleep(A_FEW_RESYNCS).await;
    let status = env.status(&name).await;
    assert_eq!(phase(&status), "dead", "{status}");
    assert_eq!(status["containers"][0]["state"], "exited", "{status}");
    assert_eq!(env.containers_of(&name).await.len(), 1);

    // New labels, same container: the very container is started again.
    let mut spec = once(FIRST_RUN_FAILS);
    spec["labels"] = json!({"try": "2"});
    env.apply(&name, spec).await;
    let status = env
        .wait_status(&name, "running again", |s| phase(s) == "running")
        .await;
    assert_eq!(status["containers"][0]["restart_count"], 0, "{status}");
    let log = events(&env, &name);
    assert!(
        log.iter()
            .any(|e| e.contains("started: the spec changed after the sandbox died")),
        "{log:#?}"
    );
    assert_eq!(
        log.iter().filter(|e| e.contains("created: image")).count(),
        1,
        "not recreated: {log:#?}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_then_running_a_dead_sandbox_revives_it() {
    let mut env = Env::start().await;
    let mut config = env.config(false);
    config.resync = Duration::from_secs(1);
    env.start_controller_with(config);
    let name = unique_name("phoenix");
    env.apply(&name, once(FIRST_RUN_FAILS)).await;
    env.wait_status(&name, "phase dead", |s| phase(s) == "dead")
        .await;
    let mut stopped = once(FIRST_RUN_FAILS);
    stopped["state"] = json!("stopped");
    env.apply(&name, stopped).await;
    env.wait_status(&name, "phase stopped", |s| phase(s) == "stopped")
        .await;
    env.apply(&name, once(FIRST_RUN_FAILS)).await;
    let status = env
        .wait_status(&name, "running again", |s| phase(s) == "running")
        .await;
    assert_eq!(status["containers"][0]["state"], "running", "{status}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converge_up_deletes_a_sandbox_that_died_by_itself_once_its_horizon_passed() {
    let ctrd = PrivateContainerd::start().await.expect("containerd");
    let namespace = unique_name("dead-up");
    let containerd = ContainerdClient::new(ctrd.socket(), &namespace)
        .expect("containerd client")
        .with_runc_root(ctrd.runc_root());
    containerd
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("containerd ready");
    let layout = busybox_image_layout(ctrd.dir().join("layout")).expect("busybox layout");
    import_oci_layout(&containerd, &layout.dir, IMAGE)
        .await
        .expect("import busybox");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _up = UpProcess::start(&ctrd, &data, &namespace);
    let server = format!("unix:{}", data.join("entity.sock").display())
        .parse()
        .expect("address");
    let client = connect(&server).await;

    let name = unique_name("doomed");
    let id = sandbox_id(&name);
    client
        .put(&id, &once("echo bye; exit 3"), None)
        .await
        .expect("put");
    let owner = id.to_string();
    let logs = data.join("logs").join(&name);
    // It dies by itself (the controller writes `dead`), then the horizon passes and the
    // entity is deleted; the controller tears the rest down.
    let mut saw_dead = false;
    let mut last = Value::Null;
    for _ in 0..600 {
        match client.get(&id).await.expect("get") {
            Some(e) => {
                saw_dead |= phase(&e.status) == "dead";
                last = e.status;
            }
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        client.get(&id).await.expect("get").is_none(),
        "never deleted; last status {last}"
    );
    assert!(saw_dead, "it was dead before it was deleted; last {last}");
    for _ in 0..600 {
        let left = containerd
            .list_containers(&[(LABEL_ENTITY_ID, owner.as_str())])
            .await
            .expect("list");
        if left.is_empty() && !logs.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = containerd
        .list_containers(&[(LABEL_ENTITY_ID, owner.as_str())])
        .await
        .expect("list");
    assert!(left.is_empty(), "containers left: {left:?}");
    assert!(!logs.exists(), "logs left at {}", logs.display());
    let snapshots = containerd
        .owned_rootfs_snapshots(&owner)
        .await
        .expect("snapshots");
    assert!(snapshots.is_empty(), "snapshots left: {snapshots:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_has_not_seen_dead_yet_does_not_bring_a_removed_container_back() {
    let env = Env::start().await;
    let name = unique_name("stale");
    env.apply(&name, once("exit 3")).await;
    let cache = Cache::new();
    let refresh = || async {
        let fresh = env
            .client
            .get(&sandbox_id(&name))
            .await
            .expect("get")
            .expect("exists");
        cache.apply(&StreamEvent::Applied(fresh));
    };
    let reconciler = SandboxReconciler::new(
        cache.clone(),
        env.containerd.clone(),
        Arc::new(ImagePuller::new(NO_REGISTRY).expect("puller")),
        Arc::new(env.client.clone()),
        Arc::new(WriteTracker::default()),
        sandbox_config(&env.config(false)),
    );
    let ctx = Context {
        executor: Executor::real(),
        cancel: Default::default(),
    };
    let reconcile = || async {
        reconciler
            .reconcile(&sandbox_id(&name), &ctx)
            .await
            .expect("reconcile")
    };
    refresh().await;
    reconcile().await;
    let cid = container_id(&sandbox_id(&name), "app");
    env.eventually("the command exits", || async {
        env.containerd
            .task_status(&cid)
            .await
            .expect("task")
            .is_some_and(|t| t.state == TaskState::Stopped)
    })
    .await;
    refresh().await;
    reconcile().await;
    assert_eq!(phase(&env.status(&name).await), "dead");
    // The cache still holds the status from before `dead`; the container is removed as
    // the orphan pass would (it reads the server).
    env.containerd
        .remove_container(&cid, Duration::from_millis(500))
        .await
        .expect("remove");
    reconcile().await;
    assert!(env.containers_of(&name).await.is_empty(), "not recreated");
    let status = env.status(&name).await;
    assert_eq!(phase(&status), "dead", "{status}");
    assert_eq!(status["containers"][0]["state"], "removed", "{status}");
    assert_eq!(status["containers"][0]["exit_code"], 3, "{status}");
    env.shutdown().await;
}

/// The netns pin, host veth and address of sandbox `name` are gone (eventually).
async fn assert_network_released(env: &Env, name: &str) {
    let id = format!("sandbox/{name}");
    let net = network_name(&id);
    let pin = env.ctrd.shared_dir().join("run").join("netns").join(&net);
    let ipam = env.data_dir.join("network").join("ipam.json");
    env.eventually("the sandbox's network is released", || {
        let (pin, net, ipam, id) = (pin.clone(), net.clone(), ipam.clone(), id.clone());
        async move {
            let allocated = std::fs::read(&ipam)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["by_sandbox"].get(&id).is_some());
            !pin.exists() && !Path::new("/sys/class/net").join(&net).exists() && !allocated
        }
    })
    .await;
}

/// The lifecycle events of sandbox `name`, as `subject message`.
fn events(env: &Env, name: &str) -> Vec<String> {
    LifecycleLog::recent_events(&env.data_dir.join("logs").join(name), 100)
        .expect("events")
        .into_iter()
        .map(|e| format!("{} {}", e.subject, e.message))
        .collect()
}

/// A `converge up` child process (host network, 1 s resync, tiny orphan grace and dead
/// horizon); stopped by its pid (SIGTERM, then SIGKILL) on drop.
struct UpProcess {
    child: Child,
}

impl UpProcess {
    fn start(ctrd: &PrivateContainerd, data: &Path, namespace: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_converge"))
            .arg("up")
            .arg("--data-dir")
            .arg(data)
            .arg("--containerd-socket")
            .arg(ctrd.socket())
            .args(["--namespace", namespace, "--node-id", "node-a"])
            .args([
                "--registry",
                "127.0.0.1:0",
                "--resync",
                "1s",
                "--host-network",
            ])
            .args(["--orphan-grace", "500ms", "--dead-sandbox-horizon", "2s"])
            .args(["--stop-grace", "500ms"])
            .arg("--runc-root")
            .arg(ctrd.runc_root())
            .env_remove("CONVERGE_SERVER")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn converge up");
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("converge up: {line}");
                }
            });
        }
        UpProcess { child }
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
