//! The host bridge sandboxes hang off: ensured to exist, be up and carry the gateway address (rtnetlink, idempotent).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use netlink_packet_route::link::InfoKind;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::netlink::{EEXIST, ensure_ipv4_address, is_errno, link_by_name, link_is_up, link_kind};

/// The default bridge name (`--bridge`).
pub const DEFAULT_BRIDGE: &str = "converge0";
/// The default sandbox subnet (`--subnet`).
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// [`DEFAULT_SUBNET`] as a value (checked at compile time).
pub const DEFAULT_SUBNET_NET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 88, 0, 0), 16);
/// Where the kernel's IPv4 forwarding switch lives.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// One async lock per bridge name, shared by every caller in this process: ensuring a
/// bridge (look up, create, bring up, list and add the gateway address) is never run twice
/// at once for one bridge. Entries are never removed (one small entry per bridge name the
/// process ever ensured).
static BRIDGE_LOCKS: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>> =
    Mutex::new(BTreeMap::new());

/// The process-wide lock of bridge `name`.
fn bridge_lock(name: &str) -> Arc<tokio::sync::Mutex<()>> {
    // The map is only ever inserted into, so a poisoned one is still consistent.
    let mut locks = BRIDGE_LOCKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Arc::clone(locks.entry(name.to_string()).or_default())
}

/// Errors from ensuring or deleting the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The bridge name is not a valid Linux interface name.
    #[error("invalid bridge name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The subnet has no room for a gateway and at least one sandbox (prefix longer than /30).
    #[error("subnet {subnet} is too small for a gateway and sandboxes (need /30 or larger)")]
    SubnetTooSmall {
        /// The rejected subnet.
        subnet: Ipv4Net,
    },
    /// A link with the bridge's name exists but is not a bridge; nothing was changed.
    #[error("link {name:?} exists but is a {kind} and not a bridge")]
    NotABridge {
        /// The link name.
        name: String,
        /// What kind of link it is.
        kind: String,
    },
    /// A netlink request failed.
    #[error("{action} bridge {name:?}")]
    Netlink {
        /// What was being done.
        action: &'static str,
        /// The bridge name.
        name: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Writing the IPv4 forwarding sysctl failed.
    #[error("enabling IPv4 forwarding via {path}")]
    Forwarding {
        /// The sysctl file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The bridge as ensured: its name, interface index and gateway address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// Interface name.
    pub name: String,
    /// Interface index in the host namespace.
    pub index: u32,
    /// The gateway address on the bridge with the subnet's prefix (first host of the subnet).
    pub gateway: Ipv4Net,
}

/// The gateway of `subnet`: its first host address, with the subnet's prefix length.
///
/// Fails with [`BridgeError::SubnetTooSmall`] for a /31 or /32.
pub fn gateway_of(subnet: Ipv4Net) -> Result<Ipv4Net, BridgeError> {
    let subnet = subnet.trunc();
    if subnet.prefix_len() > 30 {
        return Err(BridgeError::SubnetTooSmall { subnet });
    }
    let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    Ipv4Net::new(first, subnet.prefix_len()).map_err(|_| BridgeError::SubnetTooSmall { subnet })
}

/// Checks that `name` is a usable Linux interface name (1..=15 bytes, no `/`, whitespace
/// or `:`, not `.` or `..`).
pub fn validate_link_name(name: &str) -> Result<(), BridgeError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BridgeError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Ensures bridge `name` exists, is up and carries the gateway (first host) of `subnet`.
///
/// Idempotent: an existing bridge is reused and only what is missing is added; other
/// addresses on it are left alone. Safe to call concurrently: calls for one bridge name are
/// serialised within the process (a process-wide async lock per name), and a busy or
/// interrupted address listing is retried. Fails with [`BridgeError::NotABridge`]
/// (changing nothing) if a non-bridge link already has the name.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    subnet: Ipv4Net,
) -> Result<Bridge, BridgeError> {
    validate_link_name(name)?;
    let gateway = gateway_of(subnet)?;
    let lock = bridge_lock(name);
    let _serialised = lock.lock().await;
    let netlink = |action| {
        move |source| BridgeError::Netlink {
            action,
            name: name.to_string(),
            source,
        }
    };
    let link = match link_by_name(handle, name)
        .await
        .map_err(netlink("looking up"))?
    {
        Some(link) => link,
        None => {
            match handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => tracing::info!(bridge = name, "bridge created"),
                Err(e) if is_errno(&e, EEXIST) => {}
                Err(e) => return Err(netlink("creating")(e)),
            }
            link_by_name(handle, name)
                .await
                .map_err(netlink("looking up"))?
                .ok_or_else(|| netlink("finding the new")(rtnetlink::Error::RequestFailed))?
        }
    };
    match link_kind(&link) {
        Some(InfoKind::Bridge) => {}
        other => {
            return Err(BridgeError::NotABridge {
                name: name.to_string(),
                kind: other.map_or_else(|| "link without a kind".to_string(), |k| k.to_string()),
            });
        }
    }
    let index = link.header.index;
    if !link_is_up(&link) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink("bringing up"))?;
    }
    if ensure_ipv4_address(handle, index, gateway.addr(), gateway.prefix_len())
        .await
        .map_err(netlink("adding the gateway address to"))?
    {
        tracing::info!(bridge = name, gateway = %gateway, "gateway address added");
    }
    Ok(Bridge {
        name: name.to_string(),
        index,
        gateway,
    })
}

/// Whether bridge `known` is still in place as ensured: a link of that name with the same
/// index, a bridge, and up. One netlink lookup (no dump), so it is cheap enough to run
/// before every sandbox setup; it does not re-check the gateway address (that is done by
/// [`ensure_bridge`], i.e. at start-up and whenever this answers `false`). Fails with
/// [`BridgeError::Netlink`] when the lookup itself fails.
pub async fn bridge_in_place(handle: &Handle, known: &Bridge) -> Result<bool, BridgeError> {
    let link = link_by_name(handle, &known.name)
        .await
        .map_err(|source| BridgeError::Netlink {
            action: "looking up",
            name: known.name.clone(),
            source,
        })?;
    Ok(link.is_some_and(|link| {
        link.header.index == known.index
            && link_kind(&link) == Some(&InfoKind::Bridge)
            && link_is_up(&link)
    }))
}

/// Deletes bridge `name`; returns whether it existed. Idempotent. Refuses (changing
/// nothing) if the link is not a bridge.
pub async fn delete_bridge(handle: &Handle, name: &str) -> Result<bool, BridgeError> {
    validate_link_name(name)?;
    let Some(link) = link_by_name(handle, name)
        .await
        .map_err(|source| BridgeError::Netlink {
            action: "looking up",
            name: name.to_string(),
            source,
        })?
    else {
        return Ok(false);
    };
    if link_kind(&link) != Some(&InfoKind::Bridge) {
        return Err(BridgeError::NotABridge {
            name: name.to_string(),
            kind: link_kind(&link)
                .map_or_else(|| "link without a kind".to_string(), |k| k.to_string()),
        });
    }
    handle
        .link()
        .del(link.header.index)
        .execute()
        .await
        .map_err(|source| BridgeError::Netlink {
            action: "deleting",
            name: name.to_string(),
            source,
        })?;
    Ok(true)
}

/// Turns on IPv4 forwarding host-wide (`net.ipv4.ip_forward = 1`).
///
/// Only needed for sandbox traffic leaving the host (with NAT set up elsewhere); the
/// host→sandbox path over the bridge does not need it, so converge calls this only
/// when asked to.
pub fn enable_ipv4_forwarding() -> Result<(), BridgeError> {
    std::fs::write(IP_FORWARD, b"1").map_err(|source| BridgeError::Forwarding {
        path: PathBuf::from(IP_FORWARD),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_first_host_of_the_subnet() {
        let subnet: Ipv4Net = "10.88.0.0/16".parse().expect("subnet");
        assert_eq!(
            gateway_of(subnet).expect("gateway").to_string(),
            "10.88.0.1/16"
        );
        let unaligned: Ipv4Net = "10.199.3.77/24".parse().expect("subnet");
        assert_eq!(
            gateway_of(unaligned).expect("gateway").to_string(),
            "10.199.3.1/24"
        );
    }

    #[test]
    fn the_default_subnet_constants_agree() {
        assert_eq!(DEFAULT_SUBNET_NET.to_string(), DEFAULT_SUBNET);
    }

    #[test]
    fn a_slash_31_subnet_is_too_small() {
        let subnet: Ipv4Net = "10.199.0.0/31".parse().expect("subnet");
        assert!(matches!(
            gateway_of(subnet),
            Err(BridgeError::SubnetTooSmall { .. })
        ));
    }

    #[test]
    fn link_names_longer_than_15_bytes_or_with_slashes_are_rejected() {
        for bad in ["", "0123456789abcdef", "a/b", "a b", "..", "a:b"] {
            assert!(validate_link_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_link_name(DEFAULT_BRIDGE).expect("default name is valid");
    }
}
