//! Sandbox networking against the real kernel (needs root): bridge, pinned netns, veth, host→sandbox TCP, teardown, port readiness.
//!
//! Every test uses its own bridge (`cvt<random>`), its own 10.199.<n>.0/24 subnet and its
//! own run dir; a guard removes the namespaces, veths and bridge even when a test fails.
//! Traffic goes only to addresses inside namespaces the test created.

mod net_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use converge_reconcilers::network::bridge::delete_bridge;
use converge_reconcilers::network::{
    NetworkConfig, NodeNetwork, PortsError, SandboxNetworks, ensure_bridge, network_name,
    run_in_netns, wait_for_ports,
};
use net_support::{
    NetworkTeardown, can_run, delete_link, find_link, fresh_network, ipv4_addresses_of, netlink,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A private bridge, subnet and run dir, removed with everything in them on drop.
struct TestNetwork {
    config: NetworkConfig,
    _teardown: NetworkTeardown,
    _run_dir: tempfile::TempDir,
}

impl TestNetwork {
    /// `third_octet` must be unique per test so parallel tests never share a subnet.
    fn new(third_octet: u8) -> Self {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let config = fresh_network("cvt", third_octet, run_dir.path());
        Self {
            _teardown: NetworkTeardown(config.clone()),
            config,
            _run_dir: run_dir,
        }
    }

    /// A sandbox id unique to this test run.
    fn sandbox_id(&self, name: &str) -> String {
        format!("{}-{name}", self.config.bridge)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        let octets = self.config.subnet.network().octets();
        Ipv4Addr::new(octets[0], octets[1], octets[2], host)
    }
}

/// A child process (e.g. `sleep`) killed and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Binds a TCP listener inside the namespace at `netns` (on a thread that entered it).
async fn listen_inside(netns: &Path, port: u16) -> tokio::net::TcpListener {
    let listener = run_in_netns(netns, move || async move {
        let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
        listener.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(listener)
    })
    .await
    .expect("entered netns")
    .expect("bound inside netns");
    tokio::net::TcpListener::from_std(listener).expect("register listener")
}

/// Connects from the host to `ip:port` and checks the listener answers.
async fn assert_reachable(listener: &tokio::net::TcpListener, ip: Ipv4Addr, port: u16) {
    let serve = async {
        let (mut stream, _) = listener.accept().await.expect("accept");
        stream
            .write_all(b"hello from the sandbox")
            .await
            .expect("write");
    };
    let connect = async {
        let mut stream = tokio::net::TcpStream::connect(SocketAddr::from((ip, port)))
            .await
            .expect("connect from the host");
        let mut got = String::new();
        stream.read_to_string(&mut got).await.expect("read");
        got
    };
    let (_, got) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(serve, connect)
    })
    .await
    .expect("connection within 10 s");
    assert_eq!(got, "hello from the sandbox");
}

#[tokio::test]
async fn ensuring_the_bridge_twice_gives_the_same_bridge_with_one_gateway_address() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(101);
    let handle = netlink();
    let first = ensure_bridge(&handle, &net.config.bridge, net.config.subnet)
        .await
        .expect("create");
    let second = ensure_bridge(&handle, &net.config.bridge, net.config.subnet)
        .await
        .expect("again");
    assert_eq!(first, second);
    assert_eq!(first.gateway.to_string(), "10.199.101.1/24");
    assert_eq!(
        ipv4_addresses_of(&handle, first.index).await,
        vec![Ipv4Addr::new(10, 199, 101, 1)]
    );
    assert!(
        delete_bridge(&handle, &net.config.bridge)
            .await
            .expect("delete")
    );
    assert!(
        !delete_bridge(&handle, &net.config.bridge)
            .await
            .expect("idempotent")
    );
}

#[tokio::test]
async fn a_non_bridge_link_with_the_bridge_name_is_refused_and_left_alone() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(102);
    let handle = netlink();
    handle
        .link()
        .add(
            rtnetlink::LinkVeth::new(&net.config.bridge, &format!("{}p", net.config.bridge))
                .build(),
        )
        .execute()
        .await
        .expect("veth pair with the bridge's name");
    let err = ensure_bridge(&handle, &net.config.bridge, net.config.subnet)
        .await
        .expect_err("not a bridge");
    assert!(err.to_string().contains("not a bridge"), "{err}");
    let link = find_link(&handle, &net.config.bridge)
        .await
        .expect("veth still there");
    assert!(
        ipv4_addresses_of(&handle, link.header.index)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_listener_inside_the_sandbox_is_reachable_from_the_host_at_its_ip() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(103);
    let networks = SandboxNetworks::new(&net.config).await.expect("networks");
    let id = net.sandbox_id("web");
    let sandbox = networks.setup(&id, net.ip(2)).await.expect("setup");
    assert_eq!(sandbox.ip, net.ip(2));
    assert_eq!(sandbox.host_veth, network_name(&id));
    assert_eq!(
        sandbox.netns_path,
        net.config.run_dir.join("netns").join(network_name(&id))
    );
    let listener = listen_inside(&sandbox.netns_path, 8080).await;
    assert_reachable(&listener, sandbox.ip, 8080).await;
}

#[tokio::test]
async fn setting_up_a_sandbox_network_twice_gives_the_same_network() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(104);
    let networks = SandboxNetworks::new(&net.config).await.expect("networks");
    let id = net.sandbox_id("twice");
    let first = networks.setup(&id, net.ip(7)).await.expect("setup");
    let second = networks.setup(&id, net.ip(7)).await.expect("again");
    assert_eq!(first, second);
    let handle = netlink();
    let veth = find_link(&handle, &first.host_veth)
        .await
        .expect("host veth");
    let controller = veth.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    });
    assert_eq!(controller, Some(networks.bridge().index));
    let inside = run_in_netns(&first.netns_path, || async {
        let handle = netlink();
        let eth0 = find_link(&handle, "eth0").await.expect("eth0 inside");
        ipv4_addresses_of(&handle, eth0.header.index).await
    })
    .await
    .expect("inside");
    assert_eq!(inside, vec![net.ip(7)]);
}

#[tokio::test]
async fn setup_after_losing_the_host_veth_rebuilds_the_pair_and_a_new_ip_replaces_the_old() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(105);
    let networks = SandboxNetworks::new(&net.config).await.expect("networks");
    let id = net.sandbox_id("crash");
    let first = networks.setup(&id, net.ip(3)).await.expect("setup");
    let handle = netlink();
    // A crash mid-way (or an admin) removed the veth: its peer eth0 went with it.
    delete_link(&handle, &first.host_veth).await;
    let second = networks.setup(&id, net.ip(4)).await.expect("setup again");
    assert_eq!(second.netns_path, first.netns_path);
    let inside = run_in_netns(&second.netns_path, || async {
        let handle = netlink();
        let eth0 = find_link(&handle, "eth0").await.expect("eth0 inside");
        let kind = eth0.attributes.iter().find_map(|attr| match attr {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                LinkInfo::Kind(kind) => Some(kind.clone()),
                _ => None,
            }),
            _ => None,
        });
        (kind, ipv4_addresses_of(&handle, eth0.header.index).await)
    })
    .await
    .expect("inside");
    assert_eq!(inside, (Some(InfoKind::Veth), vec![net.ip(4)]));
    let listener = listen_inside(&second.netns_path, 8080).await;
    assert_reachable(&listener, net.ip(4), 8080).await;
}

#[tokio::test]
async fn teardown_removes_the_veth_and_the_netns_and_a_second_teardown_finds_nothing() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(106);
    let networks = SandboxNetworks::new(&net.config).await.expect("networks");
    let id = net.sandbox_id("gone");
    let sandbox = networks.setup(&id, net.ip(9)).await.expect("setup");
    assert_eq!(
        networks.pinned_names().expect("list"),
        vec![network_name(&id)]
    );
    let report = networks.teardown(&id).await.expect("teardown");
    assert_eq!(
        report.removed_veth.as_deref(),
        Some(sandbox.host_veth.as_str())
    );
    assert_eq!(
        report.removed_netns.as_deref(),
        Some(sandbox.netns_path.as_path())
    );
    assert!(find_link(&netlink(), &sandbox.host_veth).await.is_none());
    assert!(!sandbox.netns_path.exists());
    assert!(networks.pinned_names().expect("list").is_empty());
    let again = networks.teardown(&id).await.expect("teardown again");
    assert_eq!((again.removed_veth, again.removed_netns), (None, None));
}

#[tokio::test]
async fn an_address_outside_the_subnet_or_the_gateway_is_refused_before_any_change() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(107);
    let networks = SandboxNetworks::new(&net.config).await.expect("networks");
    let id = net.sandbox_id("bad");
    for bad in [
        net.ip(1),
        net.ip(0),
        net.ip(255),
        Ipv4Addr::new(10, 198, 0, 5),
    ] {
        let err = networks.setup(&id, bad).await.expect_err("refused");
        assert!(
            err.to_string().contains("not a usable sandbox address"),
            "{err}"
        );
    }
    assert!(networks.pinned_names().expect("list").is_empty());
    assert!(find_link(&netlink(), &network_name(&id)).await.is_none());
}

#[tokio::test]
async fn ports_listening_inside_the_netns_are_seen_and_a_missing_one_times_out_naming_them() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(108);
    let networks = SandboxNetworks::new(&net.config).await.expect("networks");
    let sandbox = networks
        .setup(&net.sandbox_id("ports"), net.ip(5))
        .await
        .expect("setup");
    let listener = listen_inside(&sandbox.netns_path, 0).await;
    let port = listener.local_addr().expect("addr").port();
    let child = ChildGuard(
        Command::new("nsenter")
            .arg(format!("--net={}", sandbox.netns_path.display()))
            .args(["sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("nsenter sleep"),
    );
    let pid = i32::try_from(child.0.id()).expect("pid fits");
    let netns_inode = std::fs::metadata(&sandbox.netns_path).expect("pin").ino();
    for _ in 0..100 {
        let now = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
        if now.is_ok_and(|ino| ino == netns_inode) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = wait_for_ports(pid, &[port], Duration::from_secs(5))
        .await
        .expect("port seen");
    assert_eq!(
        open.into_iter().collect::<Vec<_>>(),
        vec![port],
        "only the sandbox's listener"
    );
    let missing = port.wrapping_add(1).max(1);
    let err = wait_for_ports(pid, &[missing], Duration::from_millis(300))
        .await
        .expect_err("never opens");
    assert!(matches!(err, PortsError::NotOpen(_)), "{err}");
    assert_eq!(
        err.to_string(),
        format!("port {missing} never opened; listening on {port}")
    );
}

#[tokio::test]
async fn the_node_network_connects_disconnects_and_sweeps_orphans_with_their_addresses() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(109);
    let data_dir = tempfile::tempdir().expect("data dir");
    let node = NodeNetwork::open(&net.config, data_dir.path())
        .await
        .expect("open");
    let live = net.sandbox_id("live");
    let orphan = net.sandbox_id("orphan");
    let gone = net.sandbox_id("gone");
    let live_net = node.connect(&live).await.expect("connect live");
    assert_eq!(node.connect(&live).await.expect("again"), live_net);
    assert_eq!(node.netns_path(&live), live_net.netns_path);
    let orphan_net = node.connect(&orphan).await.expect("connect orphan");
    let gone_net = node.connect(&gone).await.expect("connect gone");
    assert_ne!(live_net.ip, orphan_net.ip);

    let report = node.disconnect(&gone).await.expect("disconnect");
    assert_eq!(
        report.removed_netns.as_deref(),
        Some(gone_net.netns_path.as_path())
    );
    assert_eq!(node.ipam().get(&gone), None);

    let swept = node.sweep(&[live.as_str()]).await.expect("sweep");
    let names: Vec<&str> = swept.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec![network_name(&orphan).as_str()]);
    assert_eq!(node.ipam().get(&orphan), None);
    assert!(!orphan_net.netns_path.exists());
    assert_eq!(
        node.networks().pinned_names().expect("list"),
        vec![network_name(&live)]
    );
    let listener = listen_inside(&live_net.netns_path, 8080).await;
    assert_reachable(&listener, live_net.ip, 8080).await;
}

#[tokio::test]
async fn setup_recreates_a_bridge_deleted_after_start_up() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(110);
    let networks = SandboxNetworks::new(&net.config).await.expect("networks");
    let handle = netlink();
    assert!(
        delete_bridge(&handle, &net.config.bridge)
            .await
            .expect("delete bridge")
    );
    let sandbox = networks
        .setup(&net.sandbox_id("rebridge"), net.ip(6))
        .await
        .expect("setup");
    assert!(find_link(&handle, &net.config.bridge).await.is_some());
    let listener = listen_inside(&sandbox.netns_path, 8080).await;
    assert_reachable(&listener, sandbox.ip, 8080).await;
}

#[tokio::test]
async fn setup_after_the_netns_was_unpinned_builds_a_fresh_namespace_that_works() {
    if !can_run("network tests") {
        return;
    }
    let net = TestNetwork::new(111);
    let networks = SandboxNetworks::new(&net.config).await.expect("networks");
    let id = net.sandbox_id("renetns");
    let first = networks.setup(&id, net.ip(8)).await.expect("setup");
    // A crash during teardown: the namespace is unpinned, the veth not yet deleted.
    assert!(
        networks
            .netns_dir()
            .delete(&network_name(&id))
            .await
            .expect("unpin")
    );
    let second = networks.setup(&id, net.ip(8)).await.expect("setup again");
    assert_eq!(second, first);
    let listener = listen_inside(&second.netns_path, 8080).await;
    assert_reachable(&listener, second.ip, 8080).await;
}
