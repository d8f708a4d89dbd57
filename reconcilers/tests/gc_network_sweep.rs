//! The orphan pass's network sweep against the real kernel and a private containerd (needs root): leaked networks are torn down and their IP released, live ones kept, dry-run changes nothing.
//!
//! Each test uses its own bridge (`cvt<random>`), subnet (`10.199.23<n>.0/24`), run dir
//! and data dir; a guard removes the namespaces, veths and bridge even when a test fails.

mod containerd_support;
mod gc_support;
mod net_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_support::Env;
use converge_reconcilers::engine::{Executor, Verb};
use converge_reconcilers::network::{
    Ipam, NetnsDir, NodeNetwork, Released, TeardownReport, network_name,
};
use converge_reconcilers::orphans::{OrphanCollector, OrphanConfig, OrphanNetworkConfig};
use converge_watch::{EntityId, Kind};
use gc_support::{ServerEntities, UnreachableServer};
use net_support::{NetworkTeardown, can_run, fresh_network};

const NODE: &str = "node-a";

/// A private bridge, subnet, run dir and data dir, removed with everything in them on drop.
struct TestNetwork {
    config: OrphanNetworkConfig,
    _teardown: NetworkTeardown,
    _dirs: tempfile::TempDir,
}

impl TestNetwork {
    /// `third_octet` must be unique per test so parallel tests never share a subnet.
    fn new(third_octet: u8) -> Self {
        let dirs = tempfile::tempdir().expect("tempdir");
        let network = fresh_network("cvt", third_octet, &dirs.path().join("run"));
        let config = OrphanNetworkConfig {
            network,
            data_dir: dirs.path().join("data"),
        };
        Self {
            _teardown: NetworkTeardown(config.network.clone()),
            config,
            _dirs: dirs,
        }
    }

    /// A sandbox entity id (as the sandbox reconciler keys networks) unique to this run.
    fn sandbox_id(&self, name: &str) -> EntityId {
        EntityId::new(
            Kind::Sandbox,
            format!("{}-{name}", self.config.network.bridge),
        )
        .expect("sandbox id")
    }

    /// Connects `id` the way the sandbox reconciler does.
    async fn connect(&self, id: &EntityId) {
        let node = NodeNetwork::open(&self.config.network, &self.config.data_dir)
            .await
            .expect("open node network");
        node.connect(&id.to_string()).await.expect("connect");
    }

    /// (netns pinned, host veth present, address allocated) for `id`.
    fn state_of(&self, id: &EntityId) -> (bool, bool, bool) {
        let name = network_name(&id.to_string());
        let pinned = self
            .config
            .network
            .run_dir
            .join("netns")
            .join(&name)
            .exists();
        let veth = Path::new("/sys/class/net").join(&name).exists();
        let ipam =
            Ipam::open(&self.config.data_dir, self.config.network.subnet).expect("open ipam");
        (pinned, veth, ipam.get(&id.to_string()).is_some())
    }

    fn collector(&self, env: &Env, entities: Arc<ServerEntities>) -> OrphanCollector {
        let config = OrphanConfig {
            node_id: NODE.into(),
            orphan_grace: Duration::from_secs(180),
            stop_grace: Duration::from_millis(300),
        };
        OrphanCollector::new(env.client.clone(), entities, config).with_network(self.config.clone())
    }
}

#[tokio::test]
async fn a_leaked_network_of_a_sandbox_missing_from_the_server_is_torn_down_and_its_ip_released() {
    if !can_run("network sweep tests") {
        return;
    }
    let env = Env::start().await;
    let net = TestNetwork::new(231);
    let id = net.sandbox_id("gone");
    net.connect(&id).await;
    assert_eq!(net.state_of(&id), (true, true, true));

    let report = net
        .collector(&env, Arc::new(ServerEntities::default()))
        .pass(&Executor::real())
        .await
        .expect("pass");

    assert_eq!(net.state_of(&id), (false, false, false), "{report:?}");
    assert_eq!(report.summary.deleted, 2, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
}

#[tokio::test]
async fn a_network_whose_sandbox_exists_on_the_server_is_kept() {
    if !can_run("network sweep tests") {
        return;
    }
    let env = Env::start().await;
    let net = TestNetwork::new(232);
    let id = net.sandbox_id("live");
    net.connect(&id).await;
    let server = Arc::new(ServerEntities::default());
    server.sandbox(id.name(), NODE, "running");

    let report = net
        .collector(&env, server)
        .pass(&Executor::real())
        .await
        .expect("pass");

    assert_eq!(net.state_of(&id), (true, true, true), "{report:?}");
    assert_eq!(report.summary.deleted, 0, "{report:?}");
}

#[tokio::test]
async fn a_dry_run_plans_the_network_sweep_and_changes_nothing() {
    if !can_run("network sweep tests") {
        return;
    }
    let env = Env::start().await;
    let net = TestNetwork::new(233);
    let id = net.sandbox_id("gone");
    net.connect(&id).await;
    let exec = Executor::dry_run();

    let report = net
        .collector(&env, Arc::new(ServerEntities::default()))
        .pass(&exec)
        .await
        .expect("pass");

    assert_eq!(net.state_of(&id), (true, true, true), "{report:?}");
    let target = format!("network/{}", network_name(&id.to_string()));
    assert!(
        report
            .plan
            .actions()
            .iter()
            .any(|a| a.verb == Verb::Delete && a.target == target),
        "{report:?}"
    );
    assert!(
        report
            .plan
            .actions()
            .iter()
            .any(|a| a.verb == Verb::Release && a.target.starts_with("ip/10.199.233.")),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_network_is_kept_when_its_sandbox_cannot_be_looked_up() {
    if !can_run("network sweep tests") {
        return;
    }
    let env = Env::start().await;
    let net = TestNetwork::new(234);
    let id = net.sandbox_id("unknown");
    net.connect(&id).await;
    let config = OrphanConfig {
        node_id: NODE.into(),
        orphan_grace: Duration::from_secs(180),
        stop_grace: Duration::from_millis(300),
    };
    let collector = OrphanCollector::new(env.client.clone(), Arc::new(UnreachableServer), config)
        .with_network(net.config.clone());

    let report = collector.pass(&Executor::real()).await.expect("pass");

    assert_eq!(net.state_of(&id), (true, true, true), "{report:?}");
    assert!(
        report.kept.iter().any(|k| k.target.starts_with("network/")),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_pinned_netns_with_no_allocation_and_no_container_is_swept() {
    if !can_run("network sweep tests") {
        return;
    }
    let env = Env::start().await;
    let net = TestNetwork::new(235);
    let name = network_name(&net.sandbox_id("stray").to_string());
    let dir = NetnsDir::new(&net.config.network.run_dir);
    let path = dir.create(&name).await.expect("pin netns");

    let report = net
        .collector(&env, Arc::new(ServerEntities::default()))
        .pass(&Executor::real())
        .await
        .expect("pass");

    assert!(!path.exists(), "{report:?}");
    assert_eq!(report.summary.deleted, 1, "{report:?}");
}

#[test]
fn two_allocators_over_one_file_never_lose_each_others_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let subnet = "10.199.236.0/24".parse().expect("subnet");
    let reconciler = Ipam::open(dir.path(), subnet).expect("open");
    let sweep = Ipam::open(dir.path(), subnet).expect("open");
    let first = reconciler.allocate("sandbox/one").expect("allocate");
    let second = sweep.allocate("sandbox/two").expect("allocate");
    assert_ne!(first, second);
    let torn = TeardownReport {
        name: network_name("sandbox/one"),
        removed_veth: None,
        removed_netns: None,
    };
    let proof = Released::after_teardown("sandbox/one", &torn).expect("proof");
    assert_eq!(sweep.release(proof).expect("release"), Some(first));
    reconciler.allocate("sandbox/three").expect("allocate");

    let on_disk = Ipam::open(dir.path(), subnet)
        .expect("reopen")
        .allocations();
    let ids: Vec<&str> = on_disk.keys().map(String::as_str).collect();
    assert_eq!(ids, ["sandbox/three", "sandbox/two"]);
}
