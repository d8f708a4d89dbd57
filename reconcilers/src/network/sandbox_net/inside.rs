//! Work inside a sandbox's netns: eth0/lo up, the sandbox address and default route, run on a dedicated namespace thread.

use std::net::Ipv4Addr;
use std::path::Path;

use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{SANDBOX_IFACE, SandboxNetError};
use crate::network::netlink::{
    add_ipv4_address, connect, ensure_ipv4_address, ipv4_addresses, link_by_name, link_is_up,
};
use crate::network::netns::run_in_netns;

/// What [`configure_inside`] makes true inside a sandbox's netns.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inside {
    /// eth0's only IPv4 address.
    pub(super) ip: Ipv4Addr,
    /// Its prefix length.
    pub(super) prefix: u8,
    /// The default route's gateway (the bridge's address).
    pub(super) gateway: Ipv4Addr,
    /// The namespace was made by this setup (eth0 is the new veth peer, with no address),
    /// so there is nothing stale to list and remove.
    pub(super) fresh: bool,
}

/// Inside the netns: lo and eth0 up, exactly `ip/prefix` as eth0's IPv4 address, default
/// route via `gateway`. One namespace thread and one netlink connection for all of it.
pub(super) async fn configure_inside(
    name: &str,
    netns_path: &Path,
    want: Inside,
) -> Result<(), SandboxNetError> {
    in_netns(name, netns_path, move |handle| async move {
        let mut eth0 = None;
        for iface in ["lo", SANDBOX_IFACE] {
            let link = link_by_name(&handle, iface)
                .await?
                .ok_or(rtnetlink::Error::RequestFailed)?;
            if !link_is_up(&link) {
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(link.header.index).up().build())
                    .execute()
                    .await?;
            }
            eth0 = Some(link.header.index);
        }
        let eth0 = eth0.ok_or(rtnetlink::Error::RequestFailed)?;
        if want.fresh {
            add_ipv4_address(&handle, eth0, want.ip, want.prefix).await?;
        } else {
            remove_other_ipv4_addresses(&handle, eth0, want.ip, want.prefix).await?;
            ensure_ipv4_address(&handle, eth0, want.ip, want.prefix).await?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(want.gateway)
            .output_interface(eth0)
            .build();
        handle.route().add(route).replace().execute().await
    })
    .await
}

/// Removes every IPv4 address on link `index` other than `ip/prefix` (so a changed IP
/// converges).
async fn remove_other_ipv4_addresses(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), rtnetlink::Error> {
    for (stale, stale_prefix) in ipv4_addresses(handle, index).await? {
        if (stale, stale_prefix) != (ip, prefix) {
            let mut addresses = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(stale.into())
                .execute();
            while let Some(msg) = futures::TryStreamExt::try_next(&mut addresses).await? {
                handle.address().del(msg).execute().await?;
            }
        }
    }
    Ok(())
}

/// Runs netlink work inside the netns on a dedicated thread with its own connection.
pub(super) async fn in_netns<F, Fut, T>(
    name: &str,
    netns_path: &Path,
    work: F,
) -> Result<T, SandboxNetError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
    T: Send + 'static,
{
    let outcome = run_in_netns(netns_path, move || async move {
        let handle = connect().map_err(InsideError::Socket)?;
        work(handle).await.map_err(InsideError::Netlink)
    })
    .await
    .map_err(|source| SandboxNetError::Netns {
        name: name.to_string(),
        source,
    })?;
    outcome.map_err(|e| match e {
        InsideError::Socket(source) => SandboxNetError::Socket {
            name: name.to_string(),
            source,
        },
        InsideError::Netlink(source) => SandboxNetError::Netlink {
            action: "configuring inside the netns",
            name: name.to_string(),
            source,
        },
    })
}

/// A failure on the namespace thread, before it is given the network's name.
enum InsideError {
    Socket(std::io::Error),
    Netlink(rtnetlink::Error),
}
