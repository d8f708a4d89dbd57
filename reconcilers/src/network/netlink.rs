//! Small rtnetlink lookups shared by the bridge and sandbox code (find a link, read its kind, errno checks).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Error, Handle};

/// `ENODEV`, what the kernel answers for a link name that does not exist.
pub(crate) const ENODEV: i32 = 19;
/// `EEXIST`, what the kernel answers when adding something already there.
pub(crate) const EEXIST: i32 = 17;

/// Opens a netlink connection in the current thread's network namespace and spawns its
/// driver on the current tokio runtime.
pub(crate) fn connect() -> std::io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Whether `err` is the kernel answering with errno `code`.
pub(crate) fn is_errno(err: &Error, code: i32) -> bool {
    matches!(err, Error::NetlinkError(msg) if msg.code.is_some_and(|c| c.get() == -code))
}

/// The link named `name`, or `None` if there is none.
pub(crate) async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_errno(&e, ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The link's kind (`bridge`, `veth`, ...) if it has one.
pub(crate) fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

/// The index of the bridge (or other controller) the link is attached to, if any.
pub(crate) fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// Whether the link is administratively up.
pub(crate) fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// The IPv4 addresses (with prefix length) on link `index`.
pub(crate) async fn ipv4_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Addr, u8)>, Error> {
    let mut found = Vec::new();
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addresses.try_next().await? {
        if msg.header.index != index {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                found.push((*ip, msg.header.prefix_len));
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Adds `ip/prefix` to link `index` unless that exact address is already there.
pub(crate) async fn ensure_ipv4_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<bool, Error> {
    if ipv4_addresses(handle, index).await?.contains(&(ip, prefix)) {
        return Ok(false);
    }
    match handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}
