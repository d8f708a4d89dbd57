//! Shared set-up of the kernel-facing network tests: the root check, netlink link look-ups, and a guard that removes a test network's namespaces, veths and bridge.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use converge_reconcilers::network::{NetnsDir, NetworkConfig};
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkMessage;

/// Whether the kernel-facing tests can run here (they need root); prints
/// `skipping: <what> need root` when not.
pub fn can_run(what: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipping: {what} need root");
    }
    root
}

/// A config for a bridge that does not exist yet (`<prefix>` + 8 random hex digits) on
/// `10.199.<third_octet>.0/24`, pinning namespaces under `run_dir`.
pub fn fresh_network(prefix: &str, third_octet: u8, run_dir: &std::path::Path) -> NetworkConfig {
    NetworkConfig {
        bridge: format!("{prefix}{:08x}", rand::random::<u32>()),
        subnet: format!("10.199.{third_octet}.0/24")
            .parse()
            .expect("subnet"),
        run_dir: run_dir.to_path_buf(),
    }
}

/// Removes, on drop, every namespace pinned under the network's run dir (with its host
/// veth) and then the bridge; failures are printed, never raised. Declare it before the
/// field that owns the run dir so it runs while the dir still exists.
pub struct NetworkTeardown(pub NetworkConfig);

impl Drop for NetworkTeardown {
    fn drop(&mut self) {
        let config = self.0.clone();
        // Drop may run inside the test's runtime: clean up on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let handle = netlink();
                let dir = NetnsDir::new(&config.run_dir);
                for name in dir.list().unwrap_or_default() {
                    delete_link(&handle, &name).await;
                    if let Err(e) = dir.delete(&name).await {
                        eprintln!("cleanup: unpinning {name}: {e}");
                    }
                }
                delete_link(&handle, &config.bridge).await;
            });
        });
        if cleanup.join().is_err() {
            eprintln!("cleanup of {} panicked", self.0.bridge);
        }
    }
}

/// A netlink handle on a fresh socket (its connection runs on the current runtime).
pub fn netlink() -> rtnetlink::Handle {
    let (connection, handle, _) = rtnetlink::new_connection().expect("netlink socket");
    tokio::spawn(connection);
    handle
}

/// The link called `name` in the current namespace, if any.
pub async fn find_link(handle: &rtnetlink::Handle, name: &str) -> Option<LinkMessage> {
    handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .ok()
        .flatten()
}

/// Deletes the link called `name` if it exists; errors are ignored.
pub async fn delete_link(handle: &rtnetlink::Handle, name: &str) {
    if let Some(link) = find_link(handle, name).await {
        let _ = handle.link().del(link.header.index).execute().await;
    }
}

/// The IPv4 addresses on link `index`, sorted and without repeats.
pub async fn ipv4_addresses_of(handle: &rtnetlink::Handle, index: u32) -> Vec<Ipv4Addr> {
    let mut found: Vec<Ipv4Addr> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .expect("addresses")
        .into_iter()
        .filter(|msg| msg.header.index == index)
        .flat_map(|msg| msg.attributes)
        .filter_map(|attr| match attr {
            AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
        .collect();
    found.sort();
    found.dedup();
    found
}
