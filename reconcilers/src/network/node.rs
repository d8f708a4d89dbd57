//! The node's sandbox networking in one handle: bridge + pinned netns + IPAM, with connect/disconnect/sweep for the sandbox reconciler.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ipam::{Ipam, IpamError, Released};
use super::netns::NetnsError;
use super::sandbox_net::{
    NetworkConfig, SandboxNetError, SandboxNetwork, SandboxNetworks, TeardownReport, network_name,
};

/// Errors from the node's sandbox networking.
#[derive(Debug, thiserror::Error)]
pub enum NodeNetworkError {
    /// Allocating, releasing or loading addresses failed.
    #[error("sandbox addresses")]
    Ipam(#[from] IpamError),
    /// Setting up or tearing down a sandbox network failed.
    #[error("sandbox network")]
    Network(#[from] SandboxNetError),
    /// Listing pinned namespaces failed.
    #[error("listing sandbox network namespaces")]
    Netns(#[from] NetnsError),
    /// A blocking IPAM task could not finish.
    #[error("address allocation task: {0}")]
    Task(String),
}

/// The node's sandbox networking: the bridge, the pinned namespaces and the address
/// allocations. Cheap to clone; safe to share between tasks.
#[derive(Debug, Clone)]
pub struct NodeNetwork {
    networks: SandboxNetworks,
    ipam: Arc<Ipam>,
}

impl NodeNetwork {
    /// Ensures the bridge and opens the allocations under `data_dir` (see
    /// [`SandboxNetworks::new`] and [`Ipam::open`]). Must be called inside a tokio runtime.
    pub async fn open(config: &NetworkConfig, data_dir: &Path) -> Result<Self, NodeNetworkError> {
        let ipam = Ipam::open(data_dir, config.subnet)?;
        let networks = SandboxNetworks::new(config).await?;
        Ok(Self {
            networks,
            ipam: Arc::new(ipam),
        })
    }

    /// The network namespace path sandbox `sandbox_id`'s containers join (whether or not it
    /// exists yet; [`NodeNetwork::connect`] creates it).
    pub fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        self.networks
            .netns_dir()
            .dir()
            .join(network_name(sandbox_id))
    }

    /// Gives `sandbox_id` its address (the one it has, or a new one) and its network.
    /// Idempotent; after a failure the address stays allocated and a retry reuses it.
    pub async fn connect(&self, sandbox_id: &str) -> Result<SandboxNetwork, NodeNetworkError> {
        let ip = self.blocking_ipam(sandbox_id, Ipam::allocate).await?;
        Ok(self.networks.setup(sandbox_id, ip).await?)
    }

    /// Tears down `sandbox_id`'s network and frees its address. Call only after the
    /// sandbox's containers and tasks are gone: the address may be reused at once.
    /// Idempotent; the report says what was removed.
    pub async fn disconnect(&self, sandbox_id: &str) -> Result<TeardownReport, NodeNetworkError> {
        let report = self.networks.teardown(sandbox_id).await?;
        crate::sandbox::fault::fault_point(crate::sandbox::fault::FaultStep::NetworkRemoved);
        let proof = Released::after_teardown(sandbox_id, &report)?;
        let ipam = Arc::clone(&self.ipam);
        tokio::task::spawn_blocking(move || ipam.release(proof))
            .await
            .map_err(|e| NodeNetworkError::Task(e.to_string()))??;
        Ok(report)
    }

    /// Removes the networks and addresses of sandboxes not in `live_ids`: pinned
    /// namespaces matching no live sandbox, and allocations whose owner is not live.
    /// Call only after the orphaned containers are gone. Returns what was torn down.
    pub async fn sweep(&self, live_ids: &[&str]) -> Result<Vec<TeardownReport>, NodeNetworkError> {
        let live_names: BTreeSet<String> = live_ids.iter().map(|id| network_name(id)).collect();
        let mut reports = Vec::new();
        for (sandbox_id, _) in self.ipam.reconcile(live_ids.iter().copied()) {
            reports.push(self.disconnect(&sandbox_id).await?);
        }
        let swept: BTreeSet<String> = reports.iter().map(|r| r.name.clone()).collect();
        for name in self.networks.pinned_names()? {
            if !live_names.contains(&name) && !swept.contains(&name) {
                reports.push(self.networks.teardown_named(&name).await?);
            }
        }
        Ok(reports)
    }

    /// The sandbox networks underneath (bridge, per-sandbox setup).
    pub fn networks(&self) -> &SandboxNetworks {
        &self.networks
    }

    /// The address allocations underneath.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    async fn blocking_ipam<T, F>(&self, sandbox_id: &str, op: F) -> Result<T, NodeNetworkError>
    where
        F: FnOnce(&Ipam, &str) -> Result<T, IpamError> + Send + 'static,
        T: Send + 'static,
    {
        let ipam = Arc::clone(&self.ipam);
        let id = sandbox_id.to_string();
        tokio::task::spawn_blocking(move || op(&ipam, &id))
            .await
            .map_err(|e| NodeNetworkError::Task(e.to_string()))?
            .map_err(NodeNetworkError::from)
    }
}
