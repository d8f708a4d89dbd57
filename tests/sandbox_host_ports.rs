//! Published host ports end to end (root, real containerd, netns and nftables): a client in a namespace of the test's own reaches a sandbox through its host port, delete withdraws it, a taken port is refused at apply or reported in status, and a crash before the status write leaves no stray rule.
//!
//! The sandbox network is the test's own bridge and `10.199.<n>.0/24` (see
//! `sandbox_support::TestNetwork`); the client sits in a pinned namespace on a second
//! bridge of its own with the /30 `10.199.<m>.248/30`, `m` leased like `n` (host .249, client .250: never
//! an address any test's IPAM hands out). The real-crash test runs `converge controller`
//! through `crash_support` on `10.199.168.0/24` (no other test uses it). Guards remove the
//! nftables table, the client namespace, veth and bridge even when a test fails.

mod crash_support;
mod sandbox_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use converge::daemon::controller::sandbox_config;
use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::engine::{
    Context, Executor, Reconciler, StatusStore, StatusStoreError, Verb, WriteTracker,
};
use converge_reconcilers::network::{
    NetworkConfig, PortMapping, PublishedPorts, SandboxNetworks, network_name, run_in_netns,
};
use converge_reconcilers::sandbox::{SandboxNetworking, SandboxReconciler};
use converge_watch::cache::Cache;
use converge_watch::{Entity, EntityClient, EntityId, StreamEvent};
use sandbox_support::{Env, IMAGE, NO_REGISTRY, TestNetwork, sandbox_id};
use serde_json::{Value, json};

/// The page the sandbox serves.
const PAGE: &str = "hello-through-a-host-port";

/// Whether these tests can run here (root and `nft`); prints why not.
fn can_run() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && nft) {
        eprintln!("skipping: host port tests need root and nft");
    }
    root && nft
}

/// A TCP port nothing on the host listens on right now.
fn free_host_port() -> u16 {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A sandbox spec: busybox httpd serving [`PAGE`] on 8080, published on `host_port`.
fn web(host_port: u16) -> Value {
    let script =
        format!("mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p 8080 -h /www");
    json!({"containers": [{"name": "web", "image": IMAGE,
                           "command": ["sh", "-c", script],
                           "ports": [{"port": 8080, "host_port": host_port}]}]})
}

fn phase(status: &Value) -> &str {
    status["phase"].as_str().unwrap_or("")
}

/// Deletes the nftables table of a bridge on drop.
struct TableGuard(String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The sandbox network's published ports (and a guard deleting their table).
fn published(env: &mut Env) -> (PublishedPorts, TableGuard) {
    let net = env.net.get_or_insert_with(TestNetwork::fresh);
    let ports = PublishedPorts::new(&net.bridge, net.subnet.parse().expect("subnet"));
    let guard = TableGuard(ports.table().to_string());
    (ports, guard)
}

/// `owner`'s published mappings, one per DNAT chain.
async fn mappings_of(ports: &PublishedPorts, owner: &str) -> Vec<PortMapping> {
    ports
        .rules()
        .await
        .expect("list rules")
        .into_iter()
        .filter(|r| r.owner == owner)
        .map(|r| r.mapping)
        .collect()
}

/// A client namespace on a bridge of its own; dropping it removes namespace, veth and bridge.
struct ClientNet {
    networks: Option<SandboxNetworks>,
    /// The host's address facing the client.
    host_ip: Ipv4Addr,
    netns: PathBuf,
    _bridge: TestNetwork,
    _dir: tempfile::TempDir,
}

impl ClientNet {
    /// Sets the client up beside `env`'s sandbox network (which must be chosen already).
    async fn start(env: &Env) -> ClientNet {
        assert!(env.net.is_some(), "sandbox network chosen");
        // The client's /30 sits in a subnet leased for this client alone.
        let bridge = TestNetwork::fresh();
        let m = bridge.lease.octet();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NetworkConfig {
            bridge: bridge.bridge.clone(),
            subnet: format!("10.199.{m}.248/30").parse().expect("client subnet"),
            run_dir: dir.path().join("run"),
        };
        let networks = SandboxNetworks::new(&config).await.expect("client bridge");
        let client_ip: Ipv4Addr = format!("10.199.{m}.250").parse().expect("ip");
        let net = networks
            .setup("client", client_ip)
            .await
            .expect("client netns");
        ClientNet {
            networks: Some(networks),
            host_ip: format!("10.199.{m}.249").parse().expect("ip"),
            netns: net.netns_path,
            _bridge: bridge,
            _dir: dir,
        }
    }

    /// `GET /` on the host's address at `port`, from inside the client namespace.
    async fn fetch(&self, port: u16) -> std::io::Result<String> {
        fetch_from(&self.netns, SocketAddr::from((self.host_ip, port))).await
    }
}

impl Drop for ClientNet {
    fn drop(&mut self) {
        let Some(networks) = self.networks.take() else {
            return;
        };
        // Drop may run inside the test's runtime: tear down on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            if let Err(e) = runtime.block_on(networks.teardown("client")) {
                eprintln!("cleanup: client network: {e}");
            }
        });
        if cleanup.join().is_err() {
            eprintln!("cleanup of the client network panicked");
        }
    }
}

/// `GET /` on `addr` from inside the namespace pinned at `netns`.
async fn fetch_from(netns: &Path, addr: SocketAddr) -> std::io::Result<String> {
    run_in_netns(netns, move || async move { http_get(addr) })
        .await
        .map_err(std::io::Error::other)?
}

/// A plain HTTP/1.0 GET of `/`; the whole response.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    converge_testkit::http_get(addr, &addr.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_reaches_the_sandbox_from_another_namespace_and_delete_withdraws_it() {
    if !can_run() {
        return;
    }
    let mut env = Env::start().await;
    let config = env.network_config(false);
    let (ports, _table) = published(&mut env);
    let client = ClientNet::start(&env).await;
    env.start_controller_with(config);
    let name = converge_testkit::unique_name("pub");
    let id = format!("sandbox/{name}");
    let host_port = free_host_port();
    env.apply(&name, web(host_port)).await;

    let status = env
        .wait_status(&name, "phase running", |s| phase(s) == "running")
        .await;
    let ip: Ipv4Addr = status["ip"].as_str().expect("ip").parse().expect("ipv4");
    let expected = PortMapping {
        host_port,
        ip,
        port: 8080,
    };
    assert_eq!(mappings_of(&ports, &id).await, [expected, expected]);
    let page = client
        .fetch(host_port)
        .await
        .expect("the client reaches the host port");
    assert!(page.starts_with("HTTP/1."), "{page}");
    assert!(page.contains(PAGE), "{page}");
    // Hairpin: a neighbour sandbox reaches it through the host's bridge address.
    let peer = converge_testkit::unique_name("peer");
    env.apply(
        &peer,
        json!({"containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "1000"]}]}),
    )
    .await;
    env.wait_status(&peer, "peer running", |s| phase(s) == "running")
        .await;
    let gateway = format!("{}1", env.net.as_ref().expect("network").prefix);
    let pin = env
        .ctrd
        .shared_dir()
        .join("run")
        .join("netns")
        .join(network_name(&format!("sandbox/{peer}")));
    let addr = SocketAddr::from((gateway.parse::<Ipv4Addr>().expect("gateway"), host_port));
    let page = fetch_from(&pin, addr)
        .await
        .expect("a neighbour reaches the host port through the host");
    assert!(page.contains(PAGE), "{page}");
    env.client
        .delete(&sandbox_id(&peer), None)
        .await
        .expect("delete peer");

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    env.eventually("the sandbox's rules are withdrawn", || {
        let (ports, id) = (ports.clone(), id.clone());
        async move { mappings_of(&ports, &id).await.is_empty() }
    })
    .await;
    assert!(
        client.fetch(host_port).await.is_err(),
        "nothing answers on the host port any more"
    );
    env.eventually("the peer's network is torn down", || {
        let pin = pin.clone();
        async move { !pin.exists() }
    })
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_another_sandbox_on_the_node_publishes_is_refused_at_apply() {
    let env = Env::start().await;
    let first = converge_testkit::unique_name("first");
    let second = converge_testkit::unique_name("second");
    let host_port = free_host_port();
    let mut spec = web(host_port);
    spec["node"] = json!("node-a");
    env.client
        .put(&sandbox_id(&first), &spec, None)
        .await
        .expect("the first gets the port");

    let err = env
        .client
        .put(&sandbox_id(&second), &spec, None)
        .await
        .expect_err("the port is taken on node-a");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "host port {host_port} is already published by sandbox/{first}"
        )),
        "{message}"
    );
    assert!(
        env.client
            .get(&sandbox_id(&second))
            .await
            .expect("get")
            .is_none(),
        "nothing was stored"
    );

    spec["node"] = json!("node-b");
    env.client
        .put(&sandbox_id(&second), &spec, None)
        .await
        .expect("another node may publish the same port");
    spec["node"] = json!("node-a");
    spec["labels"] = json!({"changed": "yes"});
    env.client
        .put(&sandbox_id(&first), &spec, None)
        .await
        .expect("a sandbox may keep its own port when updated");
    env.shutdown().await;
}

/// Statuses are read from the server but never written: the process "crashes" right
/// before the status write.
struct NoStatusWrites(EntityClient);

#[async_trait]
impl StatusStore for NoStatusWrites {
    async fn get(&self, id: &EntityId) -> Result<Entity, StatusStoreError> {
        StatusStore::get(&self.0, id).await
    }

    async fn patch_status(
        &self,
        id: &EntityId,
        _status: &Value,
        _expected_revision: i64,
    ) -> Result<Entity, StatusStoreError> {
        Err(StatusStoreError::Other {
            id: id.clone(),
            source: "crashed before writing the status".into(),
        })
    }
}

/// A reconciler as a freshly started controller has it (cache filled from the server now,
/// node network not opened yet), writing statuses to `statuses`.
async fn fresh_reconciler<S: StatusStore>(env: &Env, statuses: S) -> SandboxReconciler<S> {
    let net = env.net.as_ref().expect("sandbox network chosen");
    let mut network = NetworkConfig::new(&env.ctrd.shared_dir().join("run"));
    network.bridge = net.bridge.clone();
    network.subnet = net.subnet.parse().expect("subnet");
    let (entities, revision) = env.client.list(&Default::default()).await.expect("list");
    let cache = Cache::new();
    cache.apply(&StreamEvent::Restarted { entities, revision });
    SandboxReconciler::new(
        cache,
        env.containerd.clone(),
        Arc::new(ImagePuller::new(NO_REGISTRY).expect("puller")),
        Arc::new(statuses),
        Arc::new(WriteTracker::default()),
        sandbox_config(&env.config(false)),
    )
    .with_network(SandboxNetworking::new(network, env.data_dir.clone()))
}

fn context() -> Context {
    Context {
        executor: Executor::real(),
        cancel: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_publishing_and_writing_status_leaves_exactly_the_live_rules() {
    if !can_run() {
        return;
    }
    let mut env = Env::start().await;
    let (ports, _table) = published(&mut env);
    let live = converge_testkit::unique_name("live");
    let gone = converge_testkit::unique_name("gone");
    let (live_port, gone_port) = (free_host_port(), free_host_port());
    env.apply(&live, web(live_port)).await;
    env.apply(&gone, web(gone_port)).await;

    // A dry run plans the rules and changes nothing.
    let dry = Executor::dry_run();
    let planning = Context {
        executor: dry.clone(),
        cancel: Default::default(),
    };
    fresh_reconciler(&env, env.client.clone())
        .await
        .reconcile(&sandbox_id(&live), &planning)
        .await
        .expect("dry run");
    let target = format!("nft-rule/{}/{live_port}", ports.table());
    assert!(
        dry.plan()
            .actions()
            .iter()
            .any(|a| a.verb == Verb::Create && a.target == target),
        "{}",
        dry.plan().to_table()
    );
    assert!(ports.rules().await.expect("rules").is_empty(), "dry run");

    // The first controller publishes both and dies before either status is written.
    let doomed = fresh_reconciler(&env, NoStatusWrites(env.client.clone())).await;
    for name in [&live, &gone] {
        let out = doomed.reconcile(&sandbox_id(name), &context()).await;
        assert!(out.is_err(), "the status write fails");
        assert_eq!(phase(&env.status(name).await), "", "no status was written");
        assert_eq!(
            mappings_of(&ports, &format!("sandbox/{name}")).await.len(),
            2
        );
    }
    drop(doomed);
    // While it is down, one sandbox is deleted.
    env.client
        .delete(&sandbox_id(&gone), None)
        .await
        .expect("delete");

    // The restarted controller reconciles both keys (as it does for leftovers at start).
    let restarted = fresh_reconciler(&env, env.client.clone()).await;
    for name in [&live, &gone] {
        restarted
            .reconcile(&sandbox_id(name), &context())
            .await
            .expect("reconcile after restart");
    }
    let status = env.status(&live).await;
    assert_eq!(phase(&status), "running", "{status}");
    let ip: Ipv4Addr = status["ip"].as_str().expect("ip").parse().expect("ipv4");
    let expected = PortMapping {
        host_port: live_port,
        ip,
        port: 8080,
    };
    let all: Vec<(String, PortMapping)> = ports
        .rules()
        .await
        .expect("rules")
        .into_iter()
        .map(|r| (r.owner, r.mapping))
        .collect();
    let live_id = format!("sandbox/{live}");
    assert_eq!(
        all,
        [(live_id.clone(), expected), (live_id, expected)],
        "exactly the live sandbox's rules, once per chain"
    );

    env.client
        .delete(&sandbox_id(&live), None)
        .await
        .expect("delete");
    fresh_reconciler(&env, env.client.clone())
        .await
        .reconcile(&sandbox_id(&live), &context())
        .await
        .expect("teardown");
    assert!(ports.rules().await.expect("rules").is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_published_by_a_sandbox_the_api_did_not_see_is_reported_in_status_not_stolen() {
    if !can_run() {
        return;
    }
    let mut env = Env::start().await;
    let (ports, _table) = published(&mut env);
    let name = converge_testkit::unique_name("late");
    let host_port = free_host_port();
    // Another server accepted "racer" with the same port; its rule is already there.
    let racer = PortMapping {
        host_port,
        ip: Ipv4Addr::new(10, 199, 255, 254),
        port: 80,
    };
    ports
        .ensure("sandbox/racer", &[racer])
        .await
        .expect("racer's rule");
    env.apply(&name, web(host_port)).await;

    let reconciler = fresh_reconciler(&env, env.client.clone()).await;
    reconciler
        .reconcile(&sandbox_id(&name), &context())
        .await
        .expect("reconcile");
    let status = env.status(&name).await;
    assert_eq!(phase(&status), "failed", "{status}");
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&format!(
            "host port {host_port} is already published by sandbox/racer"
        )),
        "{message}"
    );
    assert_eq!(
        mappings_of(&ports, "sandbox/racer").await,
        [racer, racer],
        "racer's rule is untouched"
    );

    ports.remove("sandbox/racer").await.expect("racer gone");
    reconciler
        .reconcile(&sandbox_id(&name), &context())
        .await
        .expect("retry");
    assert_eq!(phase(&env.status(&name).await), "running");
    assert_eq!(
        mappings_of(&ports, &format!("sandbox/{name}")).await.len(),
        2
    );

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    fresh_reconciler(&env, env.client.clone())
        .await
        .reconcile(&sandbox_id(&name), &context())
        .await
        .expect("teardown");
    assert!(ports.rules().await.expect("rules").is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_aborted_after_publishing_recovers_to_exactly_one_rule_per_chain_and_deletes_it()
 {
    if !can_run() {
        return;
    }
    let world = crash_support::CrashEnv::start(168).await;
    let ports = PublishedPorts::new(&world.net.bridge, world.net.subnet.parse().expect("subnet"));
    let _table = TableGuard(ports.table().to_string());
    let name = converge_testkit::unique_name("crashpub");
    let id = format!("sandbox/{name}");
    let host_port = free_host_port();
    let mut spec = crash_support::web_sandbox();
    spec["containers"][0]["ports"][0]["host_port"] = json!(host_port);

    // Aborted after the ports are ready (and published), before the status is written.
    let mut crashing = world.controller(Some("ports-ready"));
    world.env.apply(&name, spec).await;
    crashing.wait_abort("ports-ready").await;
    assert_eq!(
        mappings_of(&ports, &id).await.len(),
        2,
        "published before the crash"
    );
    assert_eq!(phase(&world.env.status(&name).await), "", "no status yet");

    let mut controller = world.controller(None);
    let ip: Ipv4Addr = world.wait_running(&name).await.parse().expect("ipv4");
    let expected = PortMapping {
        host_port,
        ip,
        port: 8080,
    };
    assert_eq!(
        mappings_of(&ports, &id).await,
        [expected, expected],
        "the restarted controller found the rules right and added none"
    );
    world.delete(&name).await;
    world.wait_clean(&name).await;
    assert!(
        ports.rules().await.expect("rules").is_empty(),
        "no stray rule"
    );
    controller.kill().await;
    world.env.shutdown().await;
}
