//! Work inside a sandbox's netns: eth0/lo up, the sandbox address and default route, run on a dedicated namespace thread.

use std::net::Ipv4Addr;
use std::path::Path;

use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{SANDBOX_IFACE, SandboxNetError};
use crate::network::netlink::{
    connect, ensure_ipv4_address, ipv4_addresses, link_by_name, link_is_up,
};
use crate::network::netns::run_in_netns;

/// Inside the netns: lo and eth0 up, exactly `ip/prefix` as eth0's IPv4 address, default
/// route via `gateway`.
pub(super) async fn configure_inside(
    name: &str,
    netns_path: &Path,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), SandboxNetError> {
    in_netns(name, netns_path, move |handle| async move {
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
        }
        let eth0 = link_by_name(&handle, SANDBOX_IFACE)
            .await?
            .ok_or(rtnetlink::Error::RequestFailed)?
            .header
            .index;
        for (stale, stale_prefix) in ipv4_addresses(&handle, eth0).await? {
            if (stale, stale_prefix) != (ip, prefix) {
                let mut addresses = handle
                    .address()
                    .get()
                    .set_link_index_filter(eth0)
                    .set_address_filter(stale.into())
                    .execute();
                while let Some(msg) = futures::TryStreamExt::try_next(&mut addresses).await? {
                    handle.address().del(msg).execute().await?;
                }
            }
        }
        ensure_ipv4_address(&handle, eth0, ip, prefix).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(eth0)
            .build();
        handle.route().add(route).replace().execute().await
    })
    .await
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
