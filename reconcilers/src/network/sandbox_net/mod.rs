//! Per-sandbox network plumbing: a pinned netns, a veth pair to the bridge, eth0's address and default route; setup and teardown both idempotent.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::bridge::{
    Bridge, BridgeError, DEFAULT_BRIDGE, DEFAULT_SUBNET_NET, bridge_in_place, ensure_bridge,
};
use super::netlink::{
    EEXIST, ENODEV, connect, is_errno, link_by_name, link_controller, link_is_up, link_kind,
};
use super::netns::{NetnsDir, NetnsError};
use crate::sandbox::fault::{FaultStep, fault_point};

mod inside;
use inside::{Inside, configure_inside, in_netns};

/// The name of the sandbox's interface inside its namespace.
pub const SANDBOX_IFACE: &str = "eth0";
/// Prefix of host-side veth names and netns names.
const NAME_PREFIX: &str = "cv";
/// Hex digits of the sandbox id's SHA-256 in the names (2 + 12 = 14 ≤ 15 bytes).
const NAME_HASH_HEX: usize = 12;

/// Errors from setting up or tearing down a sandbox's network.
#[derive(Debug, thiserror::Error)]
pub enum SandboxNetError {
    /// The bridge could not be ensured.
    #[error("preparing the bridge")]
    Bridge(#[from] BridgeError),
    /// The pinned namespace could not be created, entered or deleted.
    #[error("network namespace {name}")]
    Netns {
        /// The netns name.
        name: String,
        /// The underlying error.
        #[source]
        source: NetnsError,
    },
    /// The requested address is not a usable host address of the subnet; nothing was changed.
    #[error("address {ip} is not a usable sandbox address in {subnet}")]
    AddressOutsideSubnet {
        /// The rejected address.
        ip: Ipv4Addr,
        /// The sandbox subnet.
        subnet: Ipv4Net,
    },
    /// A link with the sandbox's veth name exists but is not a veth; nothing was changed.
    #[error("link {name:?} exists but is not a veth")]
    NotAVeth {
        /// The link name.
        name: String,
    },
    /// A netlink request failed.
    #[error("{action} for network {name}")]
    Netlink {
        /// What was being done.
        action: &'static str,
        /// The netns / veth name of the sandbox.
        name: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Opening a netlink socket failed.
    #[error("opening a netlink socket for network {name}")]
    Socket {
        /// The netns / veth name of the sandbox.
        name: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Where sandbox networks live: bridge name, subnet, and the run dir holding `netns/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Bridge name (`--bridge`, default `converge0`).
    pub bridge: String,
    /// Sandbox subnet (`--subnet`, default `10.88.0.0/16`); the first host is the gateway.
    pub subnet: Ipv4Net,
    /// Run directory; namespaces are pinned under `<run_dir>/netns/`.
    pub run_dir: PathBuf,
}

impl NetworkConfig {
    /// The defaults (`converge0`, `10.88.0.0/16`) with namespaces pinned under `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            bridge: DEFAULT_BRIDGE.to_string(),
            subnet: DEFAULT_SUBNET_NET,
            run_dir: run_dir.to_path_buf(),
        }
    }
}

/// A sandbox's network as set up: what containers need to join it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNetwork {
    /// The sandbox's address on eth0.
    pub ip: Ipv4Addr,
    /// The subnet prefix length of that address.
    pub prefix_len: u8,
    /// The pinned netns containers join (`LinuxNamespace` path).
    pub netns_path: PathBuf,
    /// The host-side veth name.
    pub host_veth: String,
}

/// What a teardown removed (both `None` when there was nothing left to remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownReport {
    /// The network's name (netns and host veth share it, see [`network_name`]).
    pub name: String,
    /// The host veth deleted, if one existed.
    pub removed_veth: Option<String>,
    /// The pin file removed, if one existed.
    pub removed_netns: Option<PathBuf>,
}

/// The name of a sandbox's network: `cv` + the first 12 hex digits of SHA-256(sandbox id).
///
/// Deterministic (a restarted controller finds the same links), at most 15 bytes (the
/// kernel's interface-name limit), and free of whatever characters the id contains. The
/// host veth and the pinned netns both use it.
pub fn network_name(sandbox_id: &str) -> String {
    let digest = Sha256::digest(sandbox_id.as_bytes());
    let mut name = String::from(NAME_PREFIX);
    name.push_str(&hex::encode(digest)[..NAME_HASH_HEX]);
    name
}

/// Sets up and tears down sandbox networks on one bridge and subnet.
#[derive(Debug, Clone)]
pub struct SandboxNetworks {
    handle: Handle,
    bridge: Bridge,
    /// The bridge as last ensured (differs from `bridge` once it had to be recreated).
    current: Arc<Mutex<Bridge>>,
    subnet: Ipv4Net,
    netns: NetnsDir,
}

impl SandboxNetworks {
    /// Ensures the bridge (see [`ensure_bridge`]) and returns a handle for sandbox networks.
    /// Must be called inside a tokio runtime (it spawns the netlink connection there).
    pub async fn new(config: &NetworkConfig) -> Result<Self, SandboxNetError> {
        let handle = connect().map_err(|source| SandboxNetError::Socket {
            name: config.bridge.clone(),
            source,
        })?;
        let bridge = ensure_bridge(&handle, &config.bridge, config.subnet).await?;
        Ok(Self {
            handle,
            current: Arc::new(Mutex::new(bridge.clone())),
            bridge,
            subnet: config.subnet.trunc(),
            netns: NetnsDir::new(&config.run_dir),
        })
    }

    /// The bridge as ensured when this was made (each [`SandboxNetworks::setup`] checks it
    /// is still in place, so a bridge deleted meanwhile is recreated, possibly with a new
    /// index).
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// The pinned-namespace directory in use.
    pub fn netns_dir(&self) -> &NetnsDir {
        &self.netns
    }

    /// The names of all pinned sandbox namespaces (compare with [`network_name`] of the
    /// live sandboxes to find orphans).
    pub fn pinned_names(&self) -> Result<Vec<String>, NetnsError> {
        self.netns.list()
    }

    /// Gives sandbox `sandbox_id` its network with address `ip` and returns it.
    ///
    /// Each step checks before it acts, so re-running after a crash at any point converges:
    /// netns pinned; veth `cv<hash>` created with its peer directly inside the netns as
    /// `eth0` (recreated if only one end survives); host end attached to the bridge and
    /// up; inside, `lo` and `eth0` up, `ip/prefix` on eth0 (other IPv4 addresses there
    /// removed), default route via the gateway. Fails with
    /// [`SandboxNetError::AddressOutsideSubnet`] before touching anything for a bad `ip`.
    pub async fn setup(
        &self,
        sandbox_id: &str,
        ip: Ipv4Addr,
    ) -> Result<SandboxNetwork, SandboxNetError> {
        let name = network_name(sandbox_id);
        let span = tracing::info_span!("sandbox_network", sandbox = sandbox_id, network = %name);
        self.setup_named(name, ip).instrument(span).await
    }

    async fn setup_named(
        &self,
        name: String,
        ip: Ipv4Addr,
    ) -> Result<SandboxNetwork, SandboxNetError> {
        self.check_address(ip)?;
        fault_point(FaultStep::IpAllocated);
        let started = Instant::now();
        let bridge = self.bridge_in_place().await?;
        let bridge_done = started.elapsed();
        let pinned = self
            .netns
            .pin(&name)
            .await
            .map_err(|source| SandboxNetError::Netns {
                name: name.clone(),
                source,
            })?;
        let netns_path = pinned.path;
        let netns_done = started.elapsed();
        fault_point(FaultStep::NetnsPinned);
        self.ensure_veth(&name, &netns_path, pinned.created).await?;
        let veth_done = started.elapsed();
        self.attach_host_end(&name, bridge.index).await?;
        let attach_done = started.elapsed();
        let prefix_len = self.subnet.prefix_len();
        let inside = Inside {
            ip,
            prefix: prefix_len,
            gateway: bridge.gateway.addr(),
            fresh: pinned.created,
        };
        configure_inside(&name, &netns_path, inside).await?;
        fault_point(FaultStep::NetworkReady);
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        tracing::info!(
            %ip,
            fresh = pinned.created,
            total_us = micros(started.elapsed()),
            bridge_us = micros(bridge_done),
            netns_us = micros(netns_done.saturating_sub(bridge_done)),
            veth_us = micros(veth_done.saturating_sub(netns_done)),
            attach_us = micros(attach_done.saturating_sub(veth_done)),
            inside_us = micros(started.elapsed().saturating_sub(attach_done)),
            "sandbox network ready"
        );
        Ok(SandboxNetwork {
            ip,
            prefix_len,
            netns_path,
            host_veth: name,
        })
    }

    /// The bridge, checked with one lookup to be still in place as last ensured; if it is
    /// not (deleted, recreated with another index, down), it is ensured again (recreated)
    /// and remembered.
    async fn bridge_in_place(&self) -> Result<Bridge, SandboxNetError> {
        let known = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if bridge_in_place(&self.handle, &known).await? {
            return Ok(known);
        }
        tracing::info!(bridge = %known.name, "bridge changed since it was ensured; ensuring it again");
        let bridge = ensure_bridge(&self.handle, &known.name, self.subnet).await?;
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = bridge.clone();
        Ok(bridge)
    }

    /// Removes sandbox `sandbox_id`'s network: deletes the host veth (its peer goes with
    /// it) and unpins the netns. Idempotent; the report says what was actually removed.
    pub async fn teardown(&self, sandbox_id: &str) -> Result<TeardownReport, SandboxNetError> {
        self.teardown_named(&network_name(sandbox_id)).await
    }

    /// Like [`SandboxNetworks::teardown`] but by network name (for orphans found by
    /// [`SandboxNetworks::pinned_names`] whose sandbox id is gone).
    pub async fn teardown_named(&self, name: &str) -> Result<TeardownReport, SandboxNetError> {
        let netlink = |action| {
            move |source| SandboxNetError::Netlink {
                action,
                name: name.to_string(),
                source,
            }
        };
        let mut report = TeardownReport {
            name: name.to_string(),
            removed_veth: None,
            removed_netns: None,
        };
        if let Some(link) = link_by_name(&self.handle, name)
            .await
            .map_err(netlink("looking up the veth"))?
        {
            if link_kind(&link) != Some(&InfoKind::Veth) {
                return Err(SandboxNetError::NotAVeth {
                    name: name.to_string(),
                });
            }
            match self.handle.link().del(link.header.index).execute().await {
                Ok(()) => report.removed_veth = Some(name.to_string()),
                // Gone in the meantime (e.g. its netns was destroyed): nothing to do.
                Err(e) if is_errno(&e, ENODEV) => {}
                Err(e) => return Err(netlink("deleting the veth")(e)),
            }
        }
        let netns_err = |source| SandboxNetError::Netns {
            name: name.to_string(),
            source,
        };
        let path = self.netns.path_of(name).map_err(netns_err)?;
        if self.netns.delete(name).await.map_err(netns_err)? {
            report.removed_netns = Some(path);
        }
        tracing::info!(network = name, ?report, "sandbox network torn down");
        Ok(report)
    }

    fn check_address(&self, ip: Ipv4Addr) -> Result<(), SandboxNetError> {
        let usable = self.subnet.contains(&ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && ip != self.bridge.gateway.addr();
        if usable {
            Ok(())
        } else {
            Err(SandboxNetError::AddressOutsideSubnet {
                ip,
                subnet: self.subnet,
            })
        }
    }

    /// Makes sure the veth pair exists with its peer as eth0 inside the netns. With
    /// `fresh_netns` (the namespace was made by this setup, so it holds only `lo`) the look
    /// inside for a surviving peer is skipped.
    async fn ensure_veth(
        &self,
        name: &str,
        netns_path: &Path,
        fresh_netns: bool,
    ) -> Result<(), SandboxNetError> {
        let netlink = |action| {
            move |source| SandboxNetError::Netlink {
                action,
                name: name.to_string(),
                source,
            }
        };
        let host = link_by_name(&self.handle, name)
            .await
            .map_err(netlink("looking up the veth"))?;
        if let Some(link) = &host
            && link_kind(link) != Some(&InfoKind::Veth)
        {
            return Err(SandboxNetError::NotAVeth {
                name: name.to_string(),
            });
        }
        let peer_present = !fresh_netns
            && in_netns(name, netns_path, |handle| async move {
                Ok(link_by_name(&handle, SANDBOX_IFACE)
                    .await?
                    .is_some_and(|link| link_kind(&link) == Some(&InfoKind::Veth)))
            })
            .await?;
        if host.is_some() && peer_present {
            return Ok(());
        }
        // Only one end survived (e.g. the netns was recreated): start the pair over.
        if let Some(link) = host {
            match self.handle.link().del(link.header.index).execute().await {
                Ok(()) => {}
                // The kernel got there first (a destroyed netns takes its peers along).
                Err(e) if is_errno(&e, ENODEV) => {}
                Err(e) => return Err(netlink("deleting a half veth")(e)),
            }
        }
        if peer_present {
            in_netns(name, netns_path, |handle| async move {
                if let Some(link) = link_by_name(&handle, SANDBOX_IFACE).await? {
                    handle.link().del(link.header.index).execute().await?;
                }
                Ok(())
            })
            .await?;
        }
        let netns_file =
            std::fs::File::open(netns_path).map_err(|source| SandboxNetError::Netns {
                name: name.to_string(),
                source: NetnsError::Io {
                    action: "opening",
                    path: netns_path.to_path_buf(),
                    source,
                },
            })?;
        let peer = LinkUnspec::new_with_name(SANDBOX_IFACE)
            .setns_by_fd(netns_file.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match self.handle.link().add(veth).execute().await {
            Ok(()) => tracing::debug!(network = name, "veth pair created"),
            Err(e) if is_errno(&e, EEXIST) => {}
            Err(e) => return Err(netlink("creating the veth pair")(e)),
        }
        drop(netns_file);
        Ok(())
    }

    /// Attaches the host end to the bridge and brings it up (only if not so already).
    async fn attach_host_end(&self, name: &str, bridge_index: u32) -> Result<(), SandboxNetError> {
        let netlink = |action| {
            move |source| SandboxNetError::Netlink {
                action,
                name: name.to_string(),
                source,
            }
        };
        let link = link_by_name(&self.handle, name)
            .await
            .map_err(netlink("looking up the veth"))?
            .ok_or_else(|| netlink("finding the new veth")(rtnetlink::Error::RequestFailed))?;
        if link_controller(&link) == Some(bridge_index) && link_is_up(&link) {
            return Ok(());
        }
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.header.index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink("attaching the veth to the bridge"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_are_deterministic_short_and_distinct() {
        let a = network_name("web");
        assert_eq!(a, network_name("web"));
        assert_ne!(a, network_name("web2"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("cv"));
        assert!(
            network_name("weird/../id with spaces")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        );
    }
}
