//! Published host ports against the real nftables (needs root and `nft`): a sandbox's rules are created, idempotent, replaced atomically and removed, one table per bridge, conflicts refused, and the orphan pass sweeps rules of sandboxes that do not exist.
//!
//! Every test uses its own bridge name (`cvt<random>`, so its own table
//! `converge_cvt<random>`) and a `10.199.24<n>.0/24` subnet; the bridge itself is never
//! created (rules only name addresses). A guard deletes the table even when a test fails.

mod containerd_support;
mod gc_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use containerd_support::Env;
use converge_reconcilers::engine::{Executor, Verb};
use converge_reconcilers::network::published::Chain;
use converge_reconcilers::network::{
    NetworkConfig, PortMapping, PublishedError, PublishedPorts, PublishedRule,
};
use converge_reconcilers::orphans::{OrphanCollector, OrphanConfig, OrphanNetworkConfig};
use gc_support::ServerEntities;

const NODE: &str = "node-a";

/// Whether the kernel-facing tests can run here (root and `nft`); prints why not.
fn can_run() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && nft) {
        eprintln!("skipping: published port tests need root and nft");
    }
    root && nft
}

/// A table of its own for one test; dropping it deletes the table.
struct TestTable {
    bridge: String,
    subnet: String,
    ports: PublishedPorts,
}

impl TestTable {
    /// `third_octet` must be unique per test.
    fn new(third_octet: u8) -> Self {
        let bridge = format!("cvt{:08x}", rand::random::<u32>());
        let subnet = format!("10.199.{third_octet}.0/24");
        let ports = PublishedPorts::new(&bridge, subnet.parse().expect("subnet"));
        Self {
            bridge,
            subnet,
            ports,
        }
    }

    /// `host_port` → `10.199.<n>.<host>:<port>` in this table's subnet.
    fn mapping(&self, host_port: u16, host: u8, port: u16) -> PortMapping {
        let prefix = self.subnet.trim_end_matches("0/24");
        PortMapping {
            host_port,
            ip: format!("{prefix}{host}").parse().expect("ip"),
            port,
        }
    }

    /// `owner`'s rules as (chain, mapping), sorted.
    async fn rules_of(&self, owner: &str) -> Vec<(Chain, PortMapping)> {
        let mut rules: Vec<(Chain, PortMapping)> = self
            .ports
            .rules()
            .await
            .expect("list rules")
            .into_iter()
            .filter(|r| r.owner == owner)
            .map(|r| (r.chain, r.mapping))
            .collect();
        rules.sort();
        rules
    }
}

impl Drop for TestTable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", self.ports.table()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Both DNAT chains for `m`.
fn both_chains(m: PortMapping) -> Vec<(Chain, PortMapping)> {
    vec![(Chain::Prerouting, m), (Chain::Output, m)]
}

#[tokio::test]
async fn a_sandboxs_rules_are_created_idempotent_replaced_and_removed() {
    if !can_run() {
        return;
    }
    let t = TestTable::new(241);
    let first = t.mapping(18080, 2, 80);

    let created = t
        .ports
        .ensure("sandbox/web", &[first])
        .await
        .expect("ensure");
    assert_eq!(created.added, [first]);
    assert_eq!(t.rules_of("sandbox/web").await, both_chains(first));
    let handles: BTreeSet<u64> = t
        .ports
        .rules()
        .await
        .expect("rules")
        .iter()
        .map(|r| r.handle)
        .collect();

    let again = t
        .ports
        .ensure("sandbox/web", &[first])
        .await
        .expect("again");
    assert!(again.is_empty(), "nothing to do: {again:?}");
    let same: BTreeSet<u64> = t
        .ports
        .rules()
        .await
        .expect("rules")
        .iter()
        .map(|r| r.handle)
        .collect();
    assert_eq!(handles, same, "no rule was rewritten");

    let moved = t.mapping(18080, 3, 81);
    let replaced = t
        .ports
        .ensure("sandbox/web", &[moved])
        .await
        .expect("replace");
    assert_eq!(
        (replaced.added, replaced.removed),
        (vec![moved], vec![first])
    );
    assert_eq!(t.rules_of("sandbox/web").await, both_chains(moved));

    assert_eq!(
        t.ports.remove("sandbox/web").await.expect("remove"),
        [moved]
    );
    assert!(t.rules_of("sandbox/web").await.is_empty());
    assert!(
        t.ports
            .remove("sandbox/web")
            .await
            .expect("again")
            .is_empty(),
        "removing twice is fine"
    );
}

#[tokio::test]
async fn a_replacement_is_never_seen_half_done() {
    if !can_run() {
        return;
    }
    let t = TestTable::new(242);
    let a = t.mapping(18081, 2, 80);
    let b = t.mapping(18081, 3, 80);
    t.ports.ensure("sandbox/flip", &[a]).await.expect("ensure");
    let reader = {
        let ports = t.ports.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..40 {
                let rules: Vec<PublishedRule> = ports.rules().await.expect("rules");
                seen.push(
                    rules
                        .iter()
                        .map(|r| (r.chain, r.mapping))
                        .collect::<Vec<_>>(),
                );
            }
            seen
        })
    };
    for i in 0..20 {
        let next = if i % 2 == 0 { b } else { a };
        t.ports.ensure("sandbox/flip", &[next]).await.expect("flip");
    }
    for snapshot in reader.await.expect("reader") {
        let mut snapshot = snapshot;
        snapshot.sort();
        assert!(
            snapshot == both_chains(a) || snapshot == both_chains(b),
            "a listing saw {snapshot:?}"
        );
    }
}

#[tokio::test]
async fn each_bridge_has_its_own_table_and_a_taken_port_is_refused_only_within_it() {
    if !can_run() {
        return;
    }
    let one = TestTable::new(243);
    let two = TestTable::new(244);
    assert_ne!(one.ports.table(), two.ports.table());
    let m1 = one.mapping(18082, 2, 80);
    one.ports
        .ensure("sandbox/a", &[m1])
        .await
        .expect("a on one");

    let taken = one
        .ports
        .ensure("sandbox/b", &[one.mapping(18082, 3, 80)])
        .await
        .expect_err("port taken on this network");
    assert!(
        matches!(&taken, PublishedError::Conflict { host_port: 18082, owner } if owner == "sandbox/a"),
        "{taken:?}"
    );
    assert_eq!(
        taken.to_string(),
        "host port 18082 is already published by sandbox/a"
    );
    assert!(
        one.rules_of("sandbox/b").await.is_empty(),
        "nothing changed"
    );

    let m2 = two.mapping(18082, 3, 80);
    two.ports
        .ensure("sandbox/b", &[m2])
        .await
        .expect("the other table is separate");
    one.ports.remove("sandbox/a").await.expect("remove a");
    assert_eq!(
        two.rules_of("sandbox/b").await,
        both_chains(m2),
        "untouched"
    );
    assert_eq!(
        PublishedPorts::new(&two.bridge, two.subnet.parse().expect("subnet"))
            .owners()
            .await
            .expect("owners"),
        BTreeSet::from(["sandbox/b".to_string()])
    );
}

#[tokio::test]
async fn the_orphan_pass_sweeps_rules_of_a_sandbox_that_does_not_exist_and_keeps_live_ones() {
    if !can_run() {
        return;
    }
    let env = Env::start().await;
    let t = TestTable::new(245);
    let dirs = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dirs.path().join("run").join("netns")).expect("run dir");
    let live = t.mapping(18083, 2, 80);
    let gone = t.mapping(18084, 3, 80);
    t.ports.ensure("sandbox/live", &[live]).await.expect("live");
    t.ports.ensure("sandbox/gone", &[gone]).await.expect("gone");
    let server = Arc::new(ServerEntities::default());
    server.sandbox("live", NODE, "running");
    let network = OrphanNetworkConfig {
        network: NetworkConfig {
            bridge: t.bridge.clone(),
            subnet: t.subnet.parse().expect("subnet"),
            run_dir: dirs.path().join("run"),
        },
        data_dir: dirs.path().join("data"),
    };
    let config = OrphanConfig {
        node_id: NODE.into(),
        orphan_grace: Duration::from_secs(180),
        stop_grace: Duration::from_millis(300),
    };
    let collector = OrphanCollector::new(env.client.clone(), server, config).with_network(network);

    let dry = collector
        .pass(&Executor::dry_run())
        .await
        .expect("dry pass");
    let target = format!("nft-rule/{}/sandbox/gone", t.ports.table());
    assert!(
        dry.plan
            .actions()
            .iter()
            .any(|a| a.verb == Verb::Delete && a.target == target),
        "{dry:?}"
    );
    assert_eq!(
        t.rules_of("sandbox/gone").await,
        both_chains(gone),
        "dry-run"
    );

    let report = collector.pass(&Executor::real()).await.expect("pass");
    assert!(t.rules_of("sandbox/gone").await.is_empty(), "{report:?}");
    assert_eq!(
        t.rules_of("sandbox/live").await,
        both_chains(live),
        "{report:?}"
    );
    assert_eq!(report.summary.deleted, 1, "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
}
