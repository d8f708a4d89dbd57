//! The sandbox reconciler's use of the node network: opened lazily, a sandbox connected before its containers start, its ports awaited, and disconnected after its containers are gone.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use converge_watch::spec::{DesiredState, SandboxSpec};
use tokio::sync::OnceCell;

use super::error::SandboxError;
use crate::engine::{Executor, PlannedAction, Verb};
use crate::network::netns::is_pinned;
use crate::network::{Ipam, NetworkConfig, NodeNetwork, PortMapping, PublishedPorts, network_name};

/// The type of [`NetworkConfig::subnet`], for callers parsing a `--subnet` flag.
pub use ipnet::Ipv4Net;

/// Where host interfaces show up; a read-only way to ask whether a link exists.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// Default of `port_timeout_seconds`.
pub const DEFAULT_PORT_TIMEOUT: Duration = Duration::from_secs(15);

/// A sandbox reconciler's networking: bridge, subnet and run dir, and the [`NodeNetwork`]
/// opened on first real use (opening ensures the bridge, so it is a planned step).
#[derive(Debug)]
pub struct SandboxNetworking {
    config: NetworkConfig,
    data_dir: PathBuf,
    node: OnceCell<NodeNetwork>,
    published: PublishedPorts,
}

impl SandboxNetworking {
    /// Networking on `config`, with allocations kept under `data_dir` (see
    /// [`crate::network::Ipam::open`]). Touches nothing until a sandbox needs it.
    pub fn new(config: NetworkConfig, data_dir: PathBuf) -> Self {
        Self {
            published: PublishedPorts::new(&config.bridge, config.subnet),
            config,
            data_dir,
            node: OnceCell::new(),
        }
    }

    /// The pinned namespace sandbox `sandbox_id`'s containers join (whether or not it
    /// exists yet).
    pub fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        self.config
            .run_dir
            .join("netns")
            .join(network_name(sandbox_id))
    }

    /// The node network, opening it (ensuring the bridge) through `exec` on first use.
    /// `None` in dry-run while it was never opened (the bridge step is planned instead).
    async fn node(&self, exec: &Executor) -> Result<Option<&NodeNetwork>, SandboxError> {
        if let Some(node) = self.node.get() {
            return Ok(Some(node));
        }
        let action = PlannedAction::new(
            Verb::Create,
            format!("bridge/{}", self.config.bridge),
            format!("sandbox networking on {}", self.config.subnet),
        );
        if exec.is_dry_run() {
            if !link_exists(&self.config.bridge) {
                exec.note(action);
            }
            return Ok(None);
        }
        let open = self
            .node
            .get_or_try_init(|| NodeNetwork::open(&self.config, &self.data_dir));
        let node = exec
            .perform(action, async { open.await.map_err(SandboxError::network) })
            .await?;
        Ok(node)
    }

    /// Makes sure sandbox `sandbox_id` has its address, namespace, veth and routes, and
    /// returns its address (`None` in dry-run). A network that looks complete (address
    /// allocated, namespace pinned, host veth present) is left alone unless `force`; a
    /// missing or partial one is (re)built through `exec` — idempotent, so a crash at any
    /// step converges on the next call. Fails with [`SandboxError::Network`].
    pub async fn connect(
        &self,
        sandbox_id: &str,
        force: bool,
        exec: &Executor,
    ) -> Result<Option<Ipv4Addr>, SandboxError> {
        let name = network_name(sandbox_id);
        let looks_done = is_pinned(&self.netns_path(sandbox_id)) && link_exists(&name);
        let node = self.node(exec).await?;
        let allocated = node.and_then(|n| n.ipam().get(sandbox_id));
        if looks_done && !force && (allocated.is_some() || node.is_none()) {
            return Ok(allocated);
        }
        let action = PlannedAction::new(
            Verb::Create,
            format!("network/{name}"),
            "sandbox network missing or incomplete",
        );
        let Some(node) = node else {
            exec.note(action);
            self.plan_connect_steps(sandbox_id, exec).await;
            return Ok(None);
        };
        let connect = async {
            node.connect(sandbox_id)
                .await
                .map_err(SandboxError::network)
        };
        let net = exec.perform(action, connect).await?;
        tracing::debug!(ip = ?net.as_ref().map(|n| n.ip), "sandbox network ready");
        Ok(net.map(|n| n.ip))
    }

    /// Removes sandbox `sandbox_id`'s veth and namespace, then frees its address. Call
    /// only once its containers are confirmed gone. Does nothing (and plans nothing) when
    /// nothing of the network is left. Fails with [`SandboxError::Network`]; what was
    /// removed before the failure stays removed and a retry finishes the rest.
    pub async fn disconnect(&self, sandbox_id: &str, exec: &Executor) -> Result<(), SandboxError> {
        let name = network_name(sandbox_id);
        let path = self.netns_path(sandbox_id);
        let node = self.node(exec).await?;
        let allocated = match node {
            Some(node) => node.ipam().get(sandbox_id),
            None => self.read_allocation(sandbox_id).await,
        };
        let present = allocated.is_some() || path.exists() || link_exists(&name);
        if !present {
            return Ok(());
        }
        // Forwarding rules go before the address can be handed to another sandbox.
        self.publish_exactly(sandbox_id, &[], None, exec).await?;
        let action = PlannedAction::new(
            Verb::Delete,
            format!("network/{name}"),
            "sandbox deleted: veth and network namespace",
        );
        let release = PlannedAction::new(
            Verb::Release,
            format!(
                "ip/{}",
                allocated.map_or_else(|| "?".to_string(), |ip| ip.to_string())
            ),
            "after its containers and network are gone",
        );
        let Some(node) = node else {
            exec.note(action);
            exec.note(release);
            return Ok(());
        };
        let disconnect = async {
            node.disconnect(sandbox_id)
                .await
                .map_err(SandboxError::network)
        };
        if let Some(report) = exec.perform(action, disconnect).await? {
            tracing::info!(
                veth = ?report.removed_veth,
                netns = ?report.removed_netns,
                ip = ?allocated,
                "sandbox network removed and its address released"
            );
        }
        Ok(())
    }

    /// The ids of every sandbox holding an address in the allocation file, read without
    /// opening the network (a controller starting up asks this to find sandboxes whose
    /// teardown a crash interrupted). Empty when the file is missing or cannot be read.
    pub async fn allocated_sandboxes(&self) -> Vec<String> {
        let data_dir = self.data_dir.clone();
        let subnet = self.config.subnet;
        tokio::task::spawn_blocking(move || {
            Ipam::open(&data_dir, subnet)
                .map(|ipam| ipam.allocations().into_keys().collect())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default()
    }

    /// Makes sandbox `sandbox_id`'s published host ports match `spec`: when it should run,
    /// every `host_port` forwarded to `ip:port` (call once its ports are ready); when it
    /// should be stopped, none. Through `exec` (dry-run plans `create`/`delete
    /// nft-rule/<table>/<host port>`). Fails with [`SandboxError::Published`] when another
    /// sandbox already publishes one of the host ports (nothing is changed then) or `nft`
    /// fails.
    pub async fn publish(
        &self,
        sandbox_id: &str,
        spec: &SandboxSpec,
        ip: Option<Ipv4Addr>,
        exec: &Executor,
    ) -> Result<(), SandboxError> {
        let wanted: Vec<(u16, u16)> = if spec.state == DesiredState::Running {
            spec.containers
                .iter()
                .flat_map(|c| &c.ports)
                .filter_map(|p| {
                    let host = u16::try_from(p.host_port?).ok()?;
                    Some((host, u16::try_from(p.port).ok()?))
                })
                .collect()
        } else {
            Vec::new()
        };
        let Some(ip) = ip else {
            // No address yet (dry-run of a new sandbox): the rules it would get.
            for (host_port, port) in wanted {
                exec.note(PlannedAction::new(
                    Verb::Create,
                    format!("nft-rule/{}/{host_port}", self.published.table()),
                    format!("{sandbox_id} tcp {host_port} -> <sandbox ip>:{port}"),
                ));
            }
            return Ok(());
        };
        let desired: Vec<PortMapping> = wanted
            .into_iter()
            .map(|(host_port, port)| PortMapping {
                host_port,
                ip,
                port,
            })
            .collect();
        self.publish_exactly(sandbox_id, &desired, Some(ip), exec)
            .await
    }

    /// Makes `sandbox_id`'s rules exactly `desired` through `exec`.
    async fn publish_exactly(
        &self,
        sandbox_id: &str,
        desired: &[PortMapping],
        ip: Option<Ipv4Addr>,
        exec: &Executor,
    ) -> Result<(), SandboxError> {
        let change = match self.published.plan(sandbox_id, desired).await {
            Ok(change) => change,
            // Nothing to publish and the table unreadable (say, a kernel without
            // nf_tables): no rule can be read, so none is removed here, and a sandbox
            // without host ports never fails for it. The orphan pass reports and retries.
            Err(e) if desired.is_empty() => {
                tracing::debug!(error = %e, "cannot read published host ports; nothing removed");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if change.is_empty() {
            return Ok(());
        }
        let table = self.published.table();
        let target = |m: &PortMapping| format!("nft-rule/{table}/{}", m.host_port);
        let mut actions: Vec<PlannedAction> = change
            .removed
            .iter()
            .map(|m| PlannedAction::new(Verb::Delete, target(m), m.comment(sandbox_id)))
            .chain(
                change
                    .added
                    .iter()
                    .map(|m| PlannedAction::new(Verb::Create, target(m), m.comment(sandbox_id))),
            )
            .collect();
        // Only duplicates to drop (no mapping changes): still one action to perform.
        let first = actions.pop().unwrap_or_else(|| {
            PlannedAction::new(
                Verb::Delete,
                format!("nft-rule/{table}/{sandbox_id}"),
                "duplicate rules",
            )
        });
        for action in actions {
            exec.note(action);
        }
        let ensure = self.published.ensure(sandbox_id, desired);
        if let Some(done) = exec.perform(first, ensure).await? {
            tracing::info!(
                table,
                ?ip,
                added = ?done.added,
                removed = ?done.removed,
                "published host ports changed"
            );
        }
        Ok(())
    }

    /// Notes (dry-run, network never opened) the steps `connect` would take for
    /// `sandbox_id` beyond its `create network/...` entry, reading only: allocate an
    /// address (none recorded in the allocation file), pin the namespace (no pin), create
    /// the veth pair with address and default route (no host veth).
    async fn plan_connect_steps(&self, sandbox_id: &str, exec: &Executor) {
        let name = network_name(sandbox_id);
        let pin = self.netns_path(sandbox_id);
        if self.read_allocation(sandbox_id).await.is_none() {
            exec.note(PlannedAction::new(
                Verb::Create,
                format!("ip/{sandbox_id}"),
                format!("allocate the next free address in {}", self.config.subnet),
            ));
        }
        if !is_pinned(&pin) {
            exec.note(PlannedAction::new(
                Verb::Create,
                format!("netns/{name}"),
                format!("pin a network namespace at {}", pin.display()),
            ));
        }
        if !link_exists(&name) {
            exec.note(PlannedAction::new(
                Verb::Create,
                format!("veth/{name}"),
                format!(
                    "veth pair on bridge {}: address and default route inside the namespace",
                    self.config.bridge
                ),
            ));
        }
    }

    /// The address recorded for `sandbox_id` without opening the network (dry-run):
    /// a read of the allocation file; `None` when it cannot be read.
    async fn read_allocation(&self, sandbox_id: &str) -> Option<Ipv4Addr> {
        let data_dir = self.data_dir.clone();
        let subnet = self.config.subnet;
        let id = sandbox_id.to_string();
        tokio::task::spawn_blocking(move || Ipam::open(&data_dir, subnet).ok()?.get(&id))
            .await
            .ok()
            .flatten()
    }
}

/// Waits until every port of `ports` listens in the namespace of process `pid`, at most
/// `timeout`. Fails with [`SandboxError::Ports`] naming the ports that never opened and
/// what did listen, or why the process's sockets could not be read.
pub async fn wait_for_ports(
    pid: u32,
    ports: &[u16],
    timeout: Duration,
) -> Result<(), SandboxError> {
    let pid = i32::try_from(pid).unwrap_or(i32::MAX);
    crate::network::wait_for_ports(pid, ports, timeout)
        .await
        .map(|_| ())
        .map_err(SandboxError::Ports)
}

/// True when a host network interface `name` exists.
fn link_exists(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && Path::new(SYS_CLASS_NET).join(name).exists()
}
