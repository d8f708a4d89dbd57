//! Small rtnetlink lookups shared by the bridge and sandbox code (find a link, read its kind, list addresses with retried dumps, errno checks).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::{Error, Handle};

/// `ENODEV`, what the kernel answers for a link name that does not exist.
pub(crate) const ENODEV: i32 = 19;
/// `EEXIST`, what the kernel answers when adding something already there.
pub(crate) const EEXIST: i32 = 17;
/// `EBUSY`, what the kernel answers a dump request on a socket that already has a dump
/// running (`netlink_dump_start`: one dump per socket at a time).
pub(crate) const EBUSY: i32 = 16;
/// How many times an address dump is tried when the kernel refuses it as busy or marks it
/// interrupted (`NLM_F_DUMP_INTR`: the table changed while it was read).
const DUMP_ATTEMPTS: u32 = 20;
/// Pause before retrying a busy dump (times the attempt number, so at most ~0.4 s in all).
const DUMP_RETRY_STEP: Duration = Duration::from_millis(2);

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

/// The IPv4 addresses (with prefix length) on link `index`, sorted and deduplicated.
///
/// An address listing is a netlink dump. The kernel runs one dump per socket at a time and
/// answers a second one with `EBUSY`, and marks a dump during which the address table
/// changed with `NLM_F_DUMP_INTR` (its contents may then be incomplete). Both are retried
/// (up to [`DUMP_ATTEMPTS`] times, a short growing pause between busy answers); after the
/// last interrupted attempt its possibly incomplete result is returned (callers only use it
/// to skip work, and adding an address that is there anyway is `EEXIST`, treated as done).
/// Fails with the netlink error otherwise.
pub(crate) async fn ipv4_addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Addr, u8)>, Error> {
    let mut attempt = 1;
    loop {
        match dump_ipv4_addresses(handle, index).await {
            Ok((found, false)) => return Ok(found),
            Ok((found, true)) if attempt >= DUMP_ATTEMPTS => {
                tracing::debug!(index, attempt, "address dump still interrupted; using it");
                return Ok(found);
            }
            Ok((_, true)) => tracing::debug!(index, attempt, "address dump interrupted; again"),
            Err(e) if is_errno(&e, EBUSY) && attempt < DUMP_ATTEMPTS => {
                tracing::debug!(index, attempt, "netlink socket busy with a dump; again");
                tokio::time::sleep(DUMP_RETRY_STEP * attempt).await;
            }
            Err(e) => return Err(e),
        }
        attempt += 1;
    }
}

/// One address dump: the IPv4 addresses on link `index` and whether the kernel marked the
/// dump interrupted.
async fn dump_ipv4_addresses(
    handle: &Handle,
    index: u32,
) -> Result<(Vec<(Ipv4Addr, u8)>, bool), Error> {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.index = index;
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetAddress(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut responses = handle.clone().request(request)?;
    let mut found = Vec::new();
    let mut interrupted = false;
    while let Some(response) = responses.next().await {
        interrupted |= response.header.flags & NLM_F_DUMP_INTR != 0;
        match response.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(msg)) => {
                if msg.header.index != index {
                    continue;
                }
                for attr in &msg.attributes {
                    if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                        found.push((*ip, msg.header.prefix_len));
                    }
                }
            }
            NetlinkPayload::Error(err) if err.code.is_some() => {
                return Err(Error::NetlinkError(err));
            }
            NetlinkPayload::Done(_) => break,
            _ => {}
        }
    }
    found.sort();
    found.dedup();
    Ok((found, interrupted))
}

/// Adds `ip/prefix` to link `index` unless that exact address is already there; returns
/// whether it added it. Fails with the netlink error of the listing or the add.
pub(crate) async fn ensure_ipv4_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<bool, Error> {
    if ipv4_addresses(handle, index).await?.contains(&(ip, prefix)) {
        return Ok(false);
    }
    add_ipv4_address(handle, index, ip, prefix).await
}

/// Adds `ip/prefix` to link `index` without listing first; "already there" (`EEXIST`,
/// e.g. another caller added it since a listing) counts as success and returns `false`.
pub(crate) async fn add_ipv4_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<bool, Error> {
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
