//! Sandbox networking under concurrency against the real kernel (needs root): many sandboxes set up at once on one fresh bridge, none failing.
//!
//! Regression test for `adding the gateway address to bridge: Device or resource busy`:
//! concurrent address dumps on one shared netlink socket (the kernel refuses a second dump
//! while one is running on a socket with `EBUSY`). Every test uses its own bridge
//! (`cvc<random>`), a leased `10.199.<n>.0/24` subnet and its own run and data dirs; a
//! guard removes the namespaces, veths and bridge even when a test fails.

mod net_support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use converge_reconcilers::network::{
    NetworkConfig, NodeNetwork, SandboxNetwork, SandboxNetworks, run_in_netns,
};
use converge_testkit::{SubnetLease, lease_subnet};
use net_support::{NetworkTeardown, can_run, find_link, fresh_network, ipv4_addresses_of, netlink};
use netlink_packet_route::link::LinkAttribute;

/// How many sandboxes each test sets up at once.
const SANDBOXES: usize = 16;

/// A private (not yet existing) bridge, a leased subnet, run and data dirs; on drop every
/// namespace, veth and the bridge are removed.
struct TestNetwork {
    config: NetworkConfig,
    _teardown: NetworkTeardown,
    data_dir: tempfile::TempDir,
    _run_dir: tempfile::TempDir,
    _lease: SubnetLease,
}

impl TestNetwork {
    fn new() -> Self {
        let lease = lease_subnet();
        let run_dir = tempfile::tempdir().expect("run dir");
        let config = fresh_network("cvc", lease.octet(), run_dir.path());
        Self {
            _teardown: NetworkTeardown(config.clone()),
            config,
            data_dir: tempfile::tempdir().expect("data dir"),
            _run_dir: run_dir,
            _lease: lease,
        }
    }

    fn sandbox_id(&self, n: usize) -> String {
        format!("{}-sb{n}", self.config.bridge)
    }

    fn ip(&self, host: usize) -> Ipv4Addr {
        let octets = self.config.subnet.network().octets();
        Ipv4Addr::new(
            octets[0],
            octets[1],
            octets[2],
            u8::try_from(host).expect("host octet"),
        )
    }
}

/// Checks every sandbox from the outside: its host veth hangs off the bridge, and inside
/// its netns eth0 carries exactly its address.
async fn assert_all_wired(net: &TestNetwork, sandboxes: &[SandboxNetwork]) {
    let handle = netlink();
    let bridge = find_link(&handle, &net.config.bridge)
        .await
        .expect("bridge exists");
    assert_eq!(
        ipv4_addresses_of(&handle, bridge.header.index).await,
        vec![net.ip(1)],
        "exactly one gateway address on the bridge"
    );
    let ips: BTreeSet<Ipv4Addr> = sandboxes.iter().map(|s| s.ip).collect();
    assert_eq!(ips.len(), sandboxes.len(), "addresses are distinct");
    for sandbox in sandboxes {
        let veth = find_link(&handle, &sandbox.host_veth)
            .await
            .expect("host veth exists");
        let controller = veth.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::Controller(index) => Some(*index),
            _ => None,
        });
        assert_eq!(controller, Some(bridge.header.index), "veth on the bridge");
        let inside = run_in_netns(&sandbox.netns_path, || async {
            let handle = netlink();
            let eth0 = find_link(&handle, "eth0").await.expect("eth0 inside");
            ipv4_addresses_of(&handle, eth0.header.index).await
        })
        .await
        .expect("entered netns");
        assert_eq!(inside, vec![sandbox.ip], "eth0 of {}", sandbox.host_veth);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_sandboxes_connected_at_once_on_a_fresh_bridge_all_succeed() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new();
    let node = NodeNetwork::open(&net.config, net.data_dir.path())
        .await
        .expect("open");
    let tasks: Vec<_> = (0..SANDBOXES)
        .map(|n| {
            let node = node.clone();
            let id = net.sandbox_id(n);
            tokio::spawn(async move { node.connect(&id).await })
        })
        .collect();
    let mut sandboxes = Vec::new();
    for (n, task) in tasks.into_iter().enumerate() {
        let connected = task.await.expect("task ran");
        sandboxes.push(connected.unwrap_or_else(|e| panic!("sandbox {n}: {e:?}")));
    }
    assert_all_wired(&net, &sandboxes).await;

    // And all at once again (the steady state the controller re-checks) changes nothing.
    let again: Vec<_> = (0..SANDBOXES)
        .map(|n| {
            let node = node.clone();
            let id = net.sandbox_id(n);
            tokio::spawn(async move { node.connect(&id).await })
        })
        .collect();
    for (n, task) in again.into_iter().enumerate() {
        let connected = task.await.expect("task ran");
        assert_eq!(
            connected.unwrap_or_else(|e| panic!("sandbox {n} again: {e:?}")),
            sandboxes[n]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_handles_creating_one_bridge_at_once_each_set_up_a_sandbox() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new();
    let tasks: Vec<_> = (0..SANDBOXES)
        .map(|n| {
            let config = net.config.clone();
            let id = net.sandbox_id(n);
            let ip = net.ip(n + 2);
            tokio::spawn(async move {
                let networks = SandboxNetworks::new(&config).await?;
                networks.setup(&id, ip).await
            })
        })
        .collect();
    let mut sandboxes = Vec::new();
    for (n, task) in tasks.into_iter().enumerate() {
        let connected = task.await.expect("task ran");
        sandboxes.push(connected.unwrap_or_else(|e| panic!("sandbox {n}: {e:?}")));
    }
    assert_all_wired(&net, &sandboxes).await;
}
