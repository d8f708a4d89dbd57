//! IPAM: idempotent allocation, never the network/gateway/broadcast address, exhaustion, release with proof, persistence across reopen.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use converge_reconcilers::network::sandbox_net::TeardownReport;
use converge_reconcilers::network::{Ipam, IpamError, Released, network_name};
use ipnet::Ipv4Net;

fn subnet(s: &str) -> Ipv4Net {
    s.parse().expect("subnet")
}

/// A release proof as the reconciler would get it after tearing the network down.
fn proof(sandbox_id: &str) -> Released {
    let report = TeardownReport {
        name: network_name(sandbox_id),
        removed_veth: None,
        removed_netns: None,
    };
    Released::after_teardown(sandbox_id, &report).expect("proof for own report")
}

#[test]
fn allocating_twice_for_one_sandbox_returns_the_same_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), subnet("10.199.10.0/24")).expect("open");
    let first = ipam.allocate("web").expect("allocate");
    assert_eq!(ipam.allocate("web").expect("again"), first);
    assert_ne!(ipam.allocate("db").expect("other"), first);
}

#[test]
fn the_network_gateway_and_broadcast_addresses_are_never_handed_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), subnet("10.199.11.0/29")).expect("open");
    let got: HashSet<Ipv4Addr> = (0..5)
        .map(|i| ipam.allocate(&format!("sb{i}")).expect("allocate"))
        .collect();
    let expected: HashSet<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 199, 11, h)).collect();
    assert_eq!(got, expected, "only .2 to .6 of a /29");
}

#[test]
fn a_full_subnet_is_a_typed_error_that_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), subnet("10.199.12.0/30")).expect("open");
    assert_eq!(
        ipam.allocate("only").expect("one fits"),
        Ipv4Addr::new(10, 199, 12, 2)
    );
    let err = ipam.allocate("second").expect_err("full");
    assert!(
        matches!(err, IpamError::Exhausted { allocated: 1, .. }),
        "{err}"
    );
    assert_eq!(ipam.allocations().len(), 1);
    assert_eq!(ipam.get("second"), None);
}

#[test]
fn a_released_address_is_free_again_and_release_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), subnet("10.199.13.0/30")).expect("open");
    let ip = ipam.allocate("a").expect("allocate");
    assert_eq!(ipam.release(proof("a")).expect("release"), Some(ip));
    assert_eq!(ipam.release(proof("a")).expect("again"), None);
    assert_eq!(ipam.allocate("b").expect("reuse"), ip);
}

#[test]
fn a_proof_from_another_sandboxs_teardown_is_refused() {
    let report = TeardownReport {
        name: network_name("other"),
        removed_veth: None,
        removed_netns: None,
    };
    let err = Released::after_teardown("mine", &report).expect_err("wrong report");
    assert!(matches!(err, IpamError::WrongTeardown { .. }), "{err}");
}

#[test]
fn allocations_survive_reopening_and_new_ones_avoid_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = subnet("10.199.14.0/24");
    let (a, b) = {
        let ipam = Ipam::open(dir.path(), net).expect("open");
        (
            ipam.allocate("a").expect("a"),
            ipam.allocate("b").expect("b"),
        )
    };
    let ipam = Ipam::open(dir.path(), net).expect("reopen");
    assert_eq!(ipam.get("a"), Some(a));
    assert_eq!(ipam.allocate("b").expect("b again"), b);
    let c = ipam.allocate("c").expect("c");
    assert!(c != a && c != b);
}

#[test]
fn reopening_with_another_subnet_is_refused_and_keeps_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    Ipam::open(dir.path(), subnet("10.199.15.0/24"))
        .expect("open")
        .allocate("a")
        .expect("allocate");
    let err = Ipam::open(dir.path(), subnet("10.199.16.0/24")).expect_err("mismatch");
    assert!(matches!(err, IpamError::SubnetMismatch { .. }), "{err}");
    let ipam = Ipam::open(dir.path(), subnet("10.199.15.0/24")).expect("old subnet still fine");
    assert!(ipam.get("a").is_some());
}

#[test]
fn a_corrupt_file_is_reported_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("network").join("ipam.json");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, b"{not json").expect("write");
    let err = Ipam::open(dir.path(), subnet("10.199.17.0/24")).expect_err("corrupt");
    assert!(matches!(err, IpamError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), b"{not json");
}

#[test]
fn reconcile_reports_owners_that_are_not_live_without_freeing_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::open(dir.path(), subnet("10.199.18.0/24")).expect("open");
    let live = ipam.allocate("live").expect("live");
    let gone = ipam.allocate("gone").expect("gone");
    let orphans = ipam.reconcile(["live"]);
    assert_eq!(
        orphans.into_iter().collect::<Vec<_>>(),
        vec![("gone".to_string(), gone)]
    );
    assert_eq!(ipam.get("gone"), Some(gone), "still allocated");
    assert_eq!(ipam.get("live"), Some(live));
}

#[test]
fn concurrent_allocations_never_share_an_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Arc::new(Ipam::open(dir.path(), subnet("10.199.19.0/24")).expect("open"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ipam = Arc::clone(&ipam);
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| ipam.allocate(&format!("t{t}-{i}")).expect("allocate"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Ipv4Addr> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 80);
    let reopened = Ipam::open(dir.path(), subnet("10.199.19.0/24")).expect("reopen");
    assert_eq!(reopened.allocations().len(), 80);
}

#[test]
fn a_slash_31_subnet_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Ipam::open(dir.path(), subnet("10.199.20.0/31")).expect_err("too small");
    assert!(matches!(err, IpamError::SubnetTooSmall { .. }), "{err}");
}
