//! Sandbox networking end to end: a private containerd, a real bridge, pinned netns and veth; a sandbox gets an IP the host reaches, ports are awaited, delete leaves nothing behind.

mod sandbox_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use converge::daemon::controller::sandbox_config;
use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::engine::{Context, Executor, Reconciler, Verb, WriteTracker};
use converge_reconcilers::network::{NetworkConfig, network_name};
use converge_reconcilers::sandbox::{SandboxNetworking, SandboxReconciler};
use converge_watch::cache::Cache;
use converge_watch::{EntityClient, StreamEvent};
use sandbox_support::{Env, IMAGE, NO_REGISTRY, TestNetwork, sandbox_id};
use serde_json::{Value, json};

fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or("")
}

/// Fetches `/` from `ip:8080` with a plain HTTP/1.0 GET; returns the whole response.
fn fetch(ip: &str) -> std::io::Result<String> {
    let addr: SocketAddr = format!("{ip}:8080")
        .parse()
        .map_err(std::io::Error::other)?;
    converge_testkit::http_get(addr, ip)
}

/// The netns pin file and host veth name of sandbox `name`.
fn network_of(env: &Env, name: &str) -> (PathBuf, String) {
    let net = network_name(&format!("sandbox/{name}"));
    let pin = env.ctrd.shared_dir().join("run").join("netns").join(&net);
    (pin, net)
}

/// The IPAM allocations file's `by_sandbox` map (empty when there is no file).
fn allocations(data_dir: &Path) -> Value {
    let path = data_dir.join("network").join("ipam.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes).expect("ipam.json parses");
            v["by_sandbox"].clone()
        }
        Err(_) => json!({}),
    }
}

async fn assert_network_gone(env: &Env, name: &str) {
    let (pin, veth) = network_of(env, name);
    let id = format!("sandbox/{name}");
    env.eventually("the sandbox's network is torn down", || {
        let (pin, veth, id) = (pin.clone(), veth.clone(), id.clone());
        let data_dir = env.data_dir.clone();
        async move {
            !pin.exists()
                && !Path::new("/sys/class/net").join(&veth).exists()
                && allocations(&data_dir).get(&id).is_none()
        }
    })
    .await;
    assert!(
        env.containers_of(name).await.is_empty(),
        "no container left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_gets_its_own_ip_serves_http_on_it_and_delete_leaves_no_network_behind() {
    let mut env = Env::start().await;
    let config = env.network_config(false);
    env.start_controller_with(config);
    let prefix = env.net.as_ref().expect("test network").prefix.clone();
    let name = converge_testkit::unique_name("web");
    let script = "mkdir -p /www && echo hello-from-sandbox > /www/index.html \
                  && exec httpd -f -p 8080 -h /www";
    env.apply(
        &name,
        json!({"containers": [{"name": "web", "image": IMAGE,
                               "command": ["sh", "-c", script],
                               "ports": [{"port": 8080}]}]}),
    )
    .await;

    let status = env
        .wait_status(&name, "phase running with an ip", |s| {
            phase(s) == "running" && s["ip"].is_string()
        })
        .await;
    let ip = status["ip"].as_str().expect("ip").to_string();
    assert!(
        ip.starts_with(&prefix),
        "{ip} is in the test subnet {prefix}0/24"
    );
    let (pin, veth) = network_of(&env, &name);
    assert!(pin.exists(), "netns pinned at {}", pin.display());
    assert!(
        Path::new("/sys/class/net").join(&veth).exists(),
        "host veth {veth}"
    );
    assert_eq!(
        allocations(&env.data_dir)[format!("sandbox/{name}")],
        ip.as_str()
    );
    let page = tokio::task::spawn_blocking(move || fetch(&ip))
        .await
        .expect("fetch task")
        .expect("the host reaches the sandbox at IP:8080");
    assert!(page.starts_with("HTTP/1."), "{page}");
    assert!(page.contains("hello-from-sandbox"), "{page}");

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    assert_network_gone(&env, &name).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_never_opens_fails_the_sandbox_with_a_message_naming_it() {
    let mut env = Env::start().await;
    let config = env.network_config(false);
    env.start_controller_with(config);
    let name = converge_testkit::unique_name("deaf");
    env.apply(
        &name,
        json!({"port_timeout_seconds": 1,
               "containers": [{"name": "app", "image": IMAGE,
                               "command": ["sleep", "1000"],
                               "ports": [{"port": 8080}]}]}),
    )
    .await;

    let status = env
        .wait_status(&name, "phase failed", |s| phase(s) == "failed")
        .await;
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.contains("port 8080 never opened; listening on nothing"),
        "{message}"
    );
    assert!(status["ip"].is_string(), "the address is known: {status}");

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    assert_network_gone(&env, &name).await;
    env.shutdown().await;
}

/// Sandbox networking on this test's own bridge and subnet (recorded in `env.net`, so
/// the bridge is deleted with `env`), namespaces pinned where containerd sees them.
fn test_network(env: &mut Env) -> NetworkConfig {
    let run_dir = env.ctrd.shared_dir().join("run");
    let net = env.net.get_or_insert_with(TestNetwork::fresh);
    let mut config = NetworkConfig::new(&run_dir);
    config.bridge = net.bridge.clone();
    config.subnet = net.subnet.parse().expect("test subnet");
    config
}

/// A reconciler as a freshly started controller has it: its own cache (filled from the
/// server now) and a node network not opened yet.
async fn fresh_reconciler(env: &Env, network: &NetworkConfig) -> SandboxReconciler<EntityClient> {
    let (entities, revision) = env.client.list(&Default::default()).await.expect("list");
    let cache = Cache::new();
    cache.apply(&StreamEvent::Restarted { entities, revision });
    SandboxReconciler::new(
        cache,
        env.containerd.clone(),
        Arc::new(ImagePuller::new(NO_REGISTRY).expect("puller")),
        Arc::new(env.client.clone()),
        Arc::new(WriteTracker::default()),
        sandbox_config(&env.config(false)),
    )
    .with_network(SandboxNetworking::new(
        network.clone(),
        env.data_dir.clone(),
    ))
}

async fn reconcile_once(env: &Env, network: &NetworkConfig, name: &str, executor: &Executor) {
    let r = fresh_reconciler(env, network).await;
    let ctx = Context {
        executor: executor.clone(),
        cancel: Default::default(),
    };
    r.reconcile(&sandbox_id(name), &ctx)
        .await
        .expect("reconcile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_plans_bridge_network_and_release_and_changes_nothing() {
    let mut env = Env::start().await;
    let network = test_network(&mut env);
    let name = converge_testkit::unique_name("plan");
    env.apply(
        &name,
        json!({"containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "1000"]}]}),
    )
    .await;

    let dry = Executor::dry_run();
    reconcile_once(&env, &network, &name, &dry).await;
    let plan: Vec<(Verb, String)> = dry
        .plan()
        .actions()
        .iter()
        .map(|a| (a.verb, a.target.clone()))
        .collect();
    let (pin, veth) = network_of(&env, &name);
    assert!(
        plan.contains(&(Verb::Create, format!("bridge/{}", network.bridge))),
        "{plan:?}"
    );
    assert!(
        plan.contains(&(Verb::Create, format!("network/{veth}"))),
        "{plan:?}"
    );
    assert!(
        !Path::new("/sys/class/net").join(&network.bridge).exists(),
        "no bridge"
    );
    assert!(!pin.exists(), "no namespace pinned");
    assert!(
        !env.data_dir.join("network").exists(),
        "no allocation written"
    );
    assert!(env.containers_of(&name).await.is_empty());

    // Once it runs, deleting it plans the network's removal and the address's release.
    reconcile_once(&env, &network, &name, &Executor::real()).await;
    let ip = env.status(&name).await["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    let dry = Executor::dry_run();
    reconcile_once(&env, &network, &name, &dry).await;
    let plan: Vec<(Verb, String)> = dry
        .plan()
        .actions()
        .iter()
        .map(|a| (a.verb, a.target.clone()))
        .collect();
    assert!(
        plan.contains(&(Verb::Delete, format!("network/{veth}"))),
        "{plan:?}"
    );
    assert!(
        plan.contains(&(Verb::Release, format!("ip/{ip}"))),
        "{plan:?}"
    );
    assert!(pin.exists(), "dry-run removed nothing");

    reconcile_once(&env, &network, &name, &Executor::real()).await;
    assert_network_gone(&env, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_adopts_a_running_sandbox_with_the_same_ip_and_task() {
    let mut env = Env::start().await;
    let network = test_network(&mut env);
    let name = converge_testkit::unique_name("adopt");
    let other = converge_testkit::unique_name("other");
    for n in [&name, &other] {
        env.apply(
            n,
            json!({"containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "1000"]}]}),
        )
        .await;
    }
    reconcile_once(&env, &network, &name, &Executor::real()).await;
    let before = env.status(&name).await;
    assert_eq!(phase(&before), "running", "{before}");
    let cid = format!("sandbox.{name}.app");
    let pid = |t: Option<converge_reconcilers::containerd::TaskStatus>| t.map(|t| t.pid);
    let task_before = pid(env.containerd.task_status(&cid).await.expect("task"));

    // A restart: new reconciler, node network not opened yet, allocations read back.
    reconcile_once(&env, &network, &other, &Executor::real()).await;
    reconcile_once(&env, &network, &name, &Executor::real()).await;
    let after = env.status(&name).await;
    assert_eq!(
        after["ip"], before["ip"],
        "the address is adopted, not reallocated"
    );
    assert_ne!(
        env.status(&other).await["ip"],
        before["ip"],
        "another sandbox gets another address"
    );
    assert_eq!(
        pid(env.containerd.task_status(&cid).await.expect("task")),
        task_before,
        "the running task is kept"
    );
    let dry = Executor::dry_run();
    reconcile_once(&env, &network, &name, &dry).await;
    assert!(
        dry.plan().is_empty(),
        "a converged sandbox plans nothing:\n{}",
        dry.plan().to_table()
    );

    for n in [&name, &other] {
        env.client
            .delete(&sandbox_id(n), None)
            .await
            .expect("delete");
        reconcile_once(&env, &network, n, &Executor::real()).await;
        assert_network_gone(&env, n).await;
    }
}
