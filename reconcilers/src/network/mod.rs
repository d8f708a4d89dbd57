//! Sandbox networking: the host bridge, pinned network namespaces, per-sandbox veth setup, IP allocation and port readiness.
//!
//! See `docs/network.md` for the design. Typical use by the sandbox reconciler, through
//! [`NodeNetwork`]: `connect(id)` (address + netns + veth) → containers join
//! `netns_path`; on delete: remove containers → `disconnect(id)` (teardown, then release
//! the address with a [`Released`] proof made from the teardown report).

pub mod bridge;
pub mod ipam;
mod netlink;
pub mod netns;
pub mod node;
pub mod ports;
pub mod published;
pub mod sandbox_net;

pub use bridge::{Bridge, BridgeError, DEFAULT_BRIDGE, DEFAULT_SUBNET, ensure_bridge};
pub use ipam::{Ipam, IpamError, Released};
pub use netns::{NetnsDir, NetnsError, Pinned, run_in_netns};
pub use node::{NodeNetwork, NodeNetworkError};
pub use ports::{PortsError, PortsNotOpen, listening_ports, wait_for_ports};
pub use published::{PortMapping, PublishedError, PublishedPorts, PublishedRule};
pub use sandbox_net::{
    NetworkConfig, SandboxNetError, SandboxNetwork, SandboxNetworks, TeardownReport, network_name,
};
