//! The network part of the orphan pass: finds pinned netns, host veths and IP allocations of sandboxes no longer live on this node and tears them down, then releases the IP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use tracing::Instrument;

use crate::containerd::{ContainerdClient, LABEL_ENTITY_ID};
use crate::engine::{Executor, PlannedAction, Verb};
use crate::gc_report::GcPassReport;
use crate::network::{
    Ipam, NetnsDir, NetworkConfig, NodeNetwork, PublishedPorts, Released, network_name,
};

/// Where host interfaces show up (read-only).
const SYS_CLASS_NET: &str = "/sys/class/net";
/// Prefix and hash length of [`network_name`] (`cv` + 12 hex digits).
const NAME_PREFIX: &str = "cv";
const NAME_HASH_HEX: usize = 12;

/// Where the orphan pass finds the node's sandbox networks: the same settings the sandbox
/// reconciler uses (`NetworkConfig` and the data dir holding `network/ipam.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanNetworkConfig {
    /// Bridge, subnet and run dir of sandbox networks.
    pub network: NetworkConfig,
    /// The data dir the address allocations live under.
    pub data_dir: PathBuf,
}

/// What the pass saw of the node's networks, read without changing anything.
#[derive(Debug, Default)]
pub(super) struct NetworkInventory {
    /// Allocations by sandbox id.
    pub allocations: BTreeMap<String, Ipv4Addr>,
    /// Pinned netns names.
    pub pinned: BTreeSet<String>,
    /// Host veths named like sandbox networks and attached to our bridge.
    pub veths: BTreeSet<String>,
}

impl OrphanNetworkConfig {
    /// Reads allocations, pins and veths; errors are returned as report text.
    pub(super) async fn inventory(&self) -> Result<NetworkInventory, String> {
        let data_dir = self.data_dir.clone();
        let subnet = self.network.subnet;
        let allocations = tokio::task::spawn_blocking(move || {
            Ipam::open(&data_dir, subnet).map(|ipam| ipam.allocations())
        })
        .await
        .map_err(|e| format!("reading address allocations: {e}"))?
        .map_err(|e| format!("reading address allocations: {e}"))?;
        let pinned = NetnsDir::new(&self.network.run_dir)
            .list()
            .map_err(|e| format!("listing pinned network namespaces: {e}"))?
            .into_iter()
            .collect();
        let veths = sandbox_veths(Path::new(SYS_CLASS_NET), &self.network.bridge);
        Ok(NetworkInventory {
            allocations,
            pinned,
            veths,
        })
    }
}

/// Host links under `sys_class_net` named like a sandbox network (`cv` + 12 hex) whose
/// master is `bridge`. Unreadable entries are skipped.
fn sandbox_veths(sys_class_net: &Path, bridge: &str) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(sys_class_net) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_network_name(name))
        .filter(|name| {
            std::fs::read_link(sys_class_net.join(name).join("master"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f == bridge))
                .unwrap_or(false)
        })
        .collect()
}

/// True for names [`network_name`] can produce.
fn is_network_name(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX).is_some_and(|hash| {
        hash.len() == NAME_HASH_HEX
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// One network to tear down: by sandbox (its IP is then released) or by name only.
#[derive(Debug)]
pub(super) enum Leak {
    /// An allocation whose sandbox is gone.
    Sandbox {
        /// The sandbox id (entity id string).
        id: String,
        /// Its allocated address.
        ip: Ipv4Addr,
        /// Why it is gone.
        reason: String,
    },
    /// A pinned netns or veth with no allocation at all.
    Unindexed {
        /// The network name.
        name: String,
    },
}

/// Tears down `leaks` through `exec`, counting each step in `report`. Containers are
/// re-listed first: a sandbox with a container left is kept, and unindexed networks are
/// kept whenever any container exists (their netns path cannot be matched to one).
pub(super) async fn sweep(
    config: &OrphanNetworkConfig,
    client: &ContainerdClient,
    leaks: Vec<Leak>,
    exec: &Executor,
    report: &mut GcPassReport,
) {
    if leaks.is_empty() {
        return;
    }
    let containers = match client.list_containers(&[]).await {
        Ok(c) => c,
        Err(e) => {
            report.problem(format!(
                "re-listing containers before the network sweep: {e}"
            ));
            for leak in &leaks {
                report.keep(target_of(leak), "containers could not be re-listed");
            }
            return;
        }
    };
    let owners: BTreeSet<&str> = containers
        .iter()
        .filter_map(|c| c.labels.get(LABEL_ENTITY_ID).map(String::as_str))
        .collect();
    let mut node: Option<NodeNetwork> = None;
    for leak in leaks {
        let target = target_of(&leak);
        match &leak {
            Leak::Sandbox { id, .. } if owners.contains(id.as_str()) => {
                report.keep(&target, format!("sandbox {id} still has containers"));
                continue;
            }
            Leak::Unindexed { .. } if !containers.is_empty() => {
                report.keep(
                    &target,
                    "no address allocation; containers exist and their netns paths are not checked",
                );
                continue;
            }
            _ => {}
        }
        let open = if exec.is_dry_run() {
            None
        } else {
            if node.is_none() {
                match NodeNetwork::open(&config.network, &config.data_dir).await {
                    Ok(n) => node = Some(n),
                    Err(e) => {
                        report.problem(format!("opening the node network: {e}"));
                        report.keep(&target, "node network could not be opened");
                        continue;
                    }
                }
            }
            node.as_ref()
        };
        let span =
            tracing::info_span!("network_sweep", entity = ?leak_id(&leak), network = %target);
        sweep_one(open, leak, exec, report).instrument(span).await;
    }
}

/// The report target of a leak.
fn target_of(leak: &Leak) -> String {
    match leak {
        Leak::Sandbox { id, .. } => format!("network/{}", network_name(id)),
        Leak::Unindexed { name } => format!("network/{name}"),
    }
}

/// Tears one leak down (veth + netns), then releases its IP with the teardown proof.
async fn sweep_one(
    node: Option<&NodeNetwork>,
    leak: Leak,
    exec: &Executor,
    report: &mut GcPassReport,
) {
    let target = target_of(&leak);
    let (name, reason) = match &leak {
        Leak::Sandbox { id, reason, .. } => (network_name(id), format!("leaked: {reason}")),
        Leak::Unindexed { name } => (
            name.clone(),
            "leaked: no address allocation and no container left".to_string(),
        ),
    };
    let action = PlannedAction::new(Verb::Delete, &target, &reason);
    let teardown = async {
        match node {
            Some(n) => n
                .networks()
                .teardown_named(&name)
                .await
                .map_err(|e| e.to_string()),
            None => Err("node network not open".to_string()),
        }
    };
    let torn = match exec.perform(action.clone(), teardown).await {
        Ok(torn) => torn,
        Err(e) => {
            report.problem(format!("tearing down {target}: {e}"));
            return;
        }
    };
    report.summary.deleted += 1;
    report.plan.push(action);
    let Leak::Sandbox { id, ip, .. } = &leak else {
        return;
    };
    let release = PlannedAction::new(
        Verb::Release,
        format!("ip/{ip}"),
        format!("sandbox {id} gone; its veth and netns are removed"),
    );
    let free = async {
        let (Some(node), Some(torn)) = (node, torn) else {
            return Err("no teardown proof".to_string());
        };
        let proof = Released::after_teardown(id, &torn).map_err(|e| e.to_string())?;
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.ipam().release(proof))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    };
    match exec.perform(release.clone(), free).await {
        Ok(_) => {
            report.summary.deleted += 1;
            report.plan.push(release);
        }
        Err(e) => report.problem(format!("releasing ip/{ip} of {id}: {e}")),
    }
}

/// The sandboxes owning published-port rules in the network's table (none without a table).
pub(super) async fn published_owners(
    config: &OrphanNetworkConfig,
) -> Result<BTreeSet<String>, String> {
    published_ports(config)
        .owners()
        .await
        .map_err(|e| format!("listing published host ports: {e}"))
}

/// Removes the published-port rules of each `(sandbox id, why it is gone)` in `gone`
/// through `exec`, counting each sandbox's removal in `report`. Only rules naming that
/// sandbox are touched; a failure is reported and the rest still swept.
pub(super) async fn sweep_published(
    config: &OrphanNetworkConfig,
    gone: Vec<(String, String)>,
    exec: &Executor,
    report: &mut GcPassReport,
) {
    if gone.is_empty() {
        return;
    }
    let published = published_ports(config);
    for (id, reason) in gone {
        let target = format!("nft-rule/{}/{id}", published.table());
        let action = PlannedAction::new(Verb::Delete, &target, format!("leaked: {reason}"));
        let span = tracing::info_span!("published_sweep", entity = %id);
        match exec
            .perform(action.clone(), published.remove(&id))
            .instrument(span)
            .await
        {
            Ok(_) => {
                report.summary.deleted += 1;
                report.plan.push(action);
            }
            Err(e) => report.problem(format!("removing {target}: {e}")),
        }
    }
}

/// The published ports of the sandbox network `config` describes.
fn published_ports(config: &OrphanNetworkConfig) -> PublishedPorts {
    PublishedPorts::new(&config.network.bridge, config.network.subnet)
}

/// The sandbox id of a leak, if known (for the log span).
fn leak_id(leak: &Leak) -> Option<&str> {
    match leak {
        Leak::Sandbox { id, .. } => Some(id),
        Leak::Unindexed { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_a_sandbox_network_can_have_count_as_sandbox_networks() {
        assert!(is_network_name(&network_name("sandbox/web")));
        assert!(!is_network_name("cvt1234abcd"));
        assert!(!is_network_name("converge0"));
        assert!(!is_network_name("cv12345678901g"));
    }
}
