//! Published host ports: a sandbox's `host_port`s forwarded to its `ip:port` by DNAT rules in one converge-owned nftables table per bridge, each rule naming its sandbox in its comment.
//!
//! See `docs/network.md` ("Published host ports"). Every change to a sandbox's rules is one
//! `nft` transaction (stale rules deleted by handle, new ones added), so a reader never
//! sees half of a replacement and a failed change leaves the table as it was.

mod mapping;
mod nft;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::Ipv4Net;
use serde_json::Value;

pub use mapping::{PortMapping, PublishedRule};
pub use nft::Chain;
use nft::{HAIRPIN_COMMENT, ListedRule};

/// Where the kernel's host-wide IPv4 forwarding switch lives.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Chains holding one DNAT rule per published port.
const DNAT_CHAINS: [Chain; 2] = [Chain::Prerouting, Chain::Output];

/// Serialises read-diff-apply of every converge table in this process, so two sandboxes
/// claiming the same host port at once cannot both see it free.
static NFT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why published ports could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    /// The host port is already published by another sandbox on this node.
    #[error("host port {host_port} is already published by {owner}")]
    Conflict {
        /// The contested host port.
        host_port: u16,
        /// The sandbox whose rule holds it.
        owner: String,
    },
    /// The sandbox asks for one host port twice.
    #[error("host port {host_port} is requested twice by this sandbox")]
    Duplicate {
        /// The repeated host port.
        host_port: u16,
    },
    /// `nft` could not be started or talked to (not installed?).
    #[error("cannot run nft")]
    Spawn {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the batch or the listing; nothing was changed.
    #[error("nft failed ({status}): {message}")]
    Nft {
        /// Exit status.
        status: String,
        /// What nft printed on stderr.
        message: String,
    },
    /// The listing `nft -j` printed could not be understood.
    #[error("cannot understand nft's listing: {reason}")]
    Listing {
        /// What was wrong.
        reason: String,
    },
    /// IPv4 forwarding (needed for DNAT to the bridge) could not be turned on.
    #[error("cannot enable IPv4 forwarding at {IP_FORWARD}")]
    Forwarding(#[source] std::io::Error),
}

/// What [`PublishedPorts::plan`] found to change for one sandbox (empty: nothing to do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Mappings to publish.
    pub added: Vec<PortMapping>,
    /// Mappings to withdraw.
    pub removed: Vec<PortMapping>,
    commands: Vec<Value>,
}

impl Change {
    /// True when the table already holds exactly the wanted rules.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// The published ports of one node network: the table `converge_<bridge>` (family `ip`)
/// with chains `prerouting`, `output` (DNAT) and `postrouting` (hairpin masquerade).
/// Nothing outside that table is ever touched. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PublishedPorts {
    table: String,
    subnet: Ipv4Net,
    /// Sandboxes that may own rules (`None`: never listed); lets a sandbox without host
    /// ports skip the listing when it had none at the first listing or since.
    owners: Arc<Mutex<Option<BTreeSet<String>>>>,
}

impl PublishedPorts {
    /// The published ports of the network on `bridge` with sandboxes in `subnet`. Touches
    /// nothing until used.
    pub fn new(bridge: &str, subnet: Ipv4Net) -> Self {
        Self {
            table: table_name(bridge),
            subnet,
            owners: Arc::default(),
        }
    }

    /// The nftables table (family `ip`) this network's rules live in.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Every converge rule in the table (empty when there is no table). Rules whose comment
    /// is not a converge mapping are left out. Fails when `nft` cannot list the table.
    pub async fn rules(&self) -> Result<Vec<PublishedRule>, PublishedError> {
        let listed = nft::list(&self.table).await?;
        let rules = owned_rules(&listed);
        self.remember_owners(rules.iter().map(|r| r.owner.clone()).collect());
        Ok(rules)
    }

    /// The sandboxes that have rules in the table.
    pub async fn owners(&self) -> Result<BTreeSet<String>, PublishedError> {
        Ok(self.rules().await?.into_iter().map(|r| r.owner).collect())
    }

    /// What making `owner`'s rules exactly `desired` would change, read without changing
    /// anything. Fails with [`PublishedError::Conflict`] when another sandbox's rule holds
    /// one of the host ports, [`PublishedError::Duplicate`] when `desired` repeats one.
    pub async fn plan(
        &self,
        owner: &str,
        desired: &[PortMapping],
    ) -> Result<Change, PublishedError> {
        check_duplicates(desired)?;
        if desired.is_empty() && self.known_without_rules(owner) {
            return Ok(Change::default());
        }
        let listed = nft::list(&self.table).await?;
        let rules = owned_rules(&listed);
        self.remember_owners(rules.iter().map(|r| r.owner.clone()).collect());
        if let Some(taken) = rules.iter().find(|r| {
            r.owner != owner && desired.iter().any(|d| d.host_port == r.mapping.host_port)
        }) {
            return Err(PublishedError::Conflict {
                host_port: taken.mapping.host_port,
                owner: taken.owner.clone(),
            });
        }
        let has_hairpin = listed.iter().any(|r| {
            r.chain == Chain::Postrouting && r.comment.as_deref() == Some(HAIRPIN_COMMENT)
        });
        Ok(self.diff(owner, desired, &rules, has_hairpin))
    }

    /// Makes `owner`'s rules exactly `desired` in one transaction (stale ones deleted by
    /// handle, missing ones added; IPv4 forwarding turned on first when adding) and returns
    /// what changed. Idempotent; on any failure the table is left as it was.
    pub async fn ensure(
        &self,
        owner: &str,
        desired: &[PortMapping],
    ) -> Result<Change, PublishedError> {
        let _serialised = NFT_LOCK.lock().await;
        let change = self.plan(owner, desired).await?;
        if change.is_empty() {
            return Ok(change);
        }
        if !change.added.is_empty() {
            enable_forwarding()?;
        }
        nft::apply(change.commands.clone()).await?;
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(owners) = owners.as_mut() {
            if desired.is_empty() {
                owners.remove(owner);
            } else {
                owners.insert(owner.to_string());
            }
        }
        Ok(change)
    }

    /// Removes every rule of `owner`; returns what was withdrawn (empty: it had none).
    pub async fn remove(&self, owner: &str) -> Result<Vec<PortMapping>, PublishedError> {
        Ok(self.ensure(owner, &[]).await?.removed)
    }

    /// Deletes the whole table (every sandbox's rules); a missing table is fine. For tests
    /// and for taking a node network down for good.
    pub async fn delete_table(&self) -> Result<(), PublishedError> {
        let _serialised = NFT_LOCK.lock().await;
        nft::delete_table(&self.table).await?;
        *self.owners.lock().unwrap_or_else(PoisonError::into_inner) = Some(BTreeSet::new());
        Ok(())
    }

    /// The change from `rules` to `owner` having exactly `desired`.
    fn diff(
        &self,
        owner: &str,
        desired: &[PortMapping],
        rules: &[PublishedRule],
        has_hairpin: bool,
    ) -> Change {
        let mut change = Change::default();
        let wanted: BTreeSet<(Chain, PortMapping)> = DNAT_CHAINS
            .iter()
            .flat_map(|c| desired.iter().map(move |m| (*c, *m)))
            .collect();
        let mut kept = BTreeSet::new();
        let mut removed = BTreeSet::new();
        let mut deletes = Vec::new();
        for rule in rules.iter().filter(|r| r.owner == owner) {
            let key = (rule.chain, rule.mapping);
            // A mapping is kept once per chain; duplicates and stale mappings go.
            if !wanted.contains(&key) || !kept.insert(key) {
                deletes.push(nft::delete_rule(&self.table, rule.chain, rule.handle));
                if !desired.contains(&rule.mapping) {
                    removed.insert(rule.mapping);
                }
            }
        }
        let missing: Vec<(Chain, PortMapping)> = wanted.difference(&kept).copied().collect();
        change.removed = removed.into_iter().collect();
        change.added = missing
            .iter()
            .map(|(_, m)| *m)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            change.commands = nft::ensure_table(&self.table);
            if !has_hairpin {
                change
                    .commands
                    .push(nft::hairpin_rule(&self.table, self.subnet));
            }
        }
        change.commands.extend(deletes);
        for (chain, mapping) in missing {
            let comment = mapping.comment(owner);
            change
                .commands
                .push(nft::dnat_rule(&self.table, chain, &mapping, &comment));
        }
        change
    }

    /// True when the last listing showed no rule of `owner` (so an empty `desired` needs
    /// no listing at all).
    fn known_without_rules(&self, owner: &str) -> bool {
        self.owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|owners| !owners.contains(owner))
    }

    /// Adds `owners` (seen in a listing) to the remembered ones. Never forgets: a listing
    /// taken outside the lock may predate a concurrent change, and remembering too many
    /// owners only costs a listing; only [`PublishedPorts::ensure`] forgets, after it
    /// removed an owner's rules.
    fn remember_owners(&self, owners: BTreeSet<String>) {
        let mut known = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        known.get_or_insert_with(BTreeSet::new).extend(owners);
    }
}

/// `converge_<bridge>`: one table per bridge, so networks (and parallel tests) never share
/// rules.
pub fn table_name(bridge: &str) -> String {
    format!("converge_{bridge}")
}

/// The converge rules among `listed` (comment parses as a mapping, chain holds DNAT).
fn owned_rules(listed: &[ListedRule]) -> Vec<PublishedRule> {
    listed
        .iter()
        .filter(|r| DNAT_CHAINS.contains(&r.chain))
        .filter_map(|r| {
            let (owner, mapping) = PortMapping::parse_comment(r.comment.as_deref()?)?;
            Some(PublishedRule {
                chain: r.chain,
                handle: r.handle,
                owner,
                mapping,
            })
        })
        .collect()
}

/// Fails on the first host port `desired` names twice.
fn check_duplicates(desired: &[PortMapping]) -> Result<(), PublishedError> {
    let mut seen = BTreeMap::new();
    for m in desired {
        if seen.insert(m.host_port, ()).is_some() {
            return Err(PublishedError::Duplicate {
                host_port: m.host_port,
            });
        }
    }
    Ok(())
}

/// Turns on host-wide IPv4 forwarding if it is off: DNAT-ed connections are forwarded from
/// the interface they arrived on to the bridge. Never turns it off.
fn enable_forwarding() -> Result<(), PublishedError> {
    let on = std::fs::read_to_string(IP_FORWARD)
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    if !on {
        std::fs::write(IP_FORWARD, b"1").map_err(PublishedError::Forwarding)?;
        tracing::info!("enabled IPv4 forwarding for published host ports");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::mapping::tests::mapping;
    use super::*;

    fn rule(chain: Chain, handle: u64, owner: &str, m: PortMapping) -> PublishedRule {
        PublishedRule {
            chain,
            handle,
            owner: owner.into(),
            mapping: m,
        }
    }

    #[test]
    fn the_diff_keeps_what_matches_replaces_what_changed_and_leaves_others_alone() {
        let ports = PublishedPorts::new("cvt0", "10.199.0.0/24".parse().expect("subnet"));
        let old = mapping(8080, "10.199.0.2", 80);
        let new = mapping(8080, "10.199.0.3", 80);
        let other = mapping(9090, "10.199.0.9", 90);
        let rules = [
            rule(Chain::Prerouting, 4, "sandbox/a", old),
            rule(Chain::Output, 5, "sandbox/a", old),
            rule(Chain::Prerouting, 6, "sandbox/b", other),
        ];
        let same = ports.diff("sandbox/a", &[old], &rules, true);
        assert!(same.is_empty(), "{same:?}");
        let replaced = ports.diff("sandbox/a", &[new], &rules, true);
        assert_eq!(replaced.added, [new]);
        assert_eq!(replaced.removed, [old]);
        let deletes = replaced
            .commands
            .iter()
            .filter(|c| c.get("delete").is_some())
            .count();
        assert_eq!(deletes, 2, "both of a's old rules, none of b's");
        let gone = ports.diff("sandbox/a", &[], &rules, true);
        assert_eq!(gone.removed, [old]);
        assert!(gone.added.is_empty());
    }

    #[test]
    fn a_duplicated_rule_is_dropped_even_when_no_mapping_changes() {
        let ports = PublishedPorts::new("cvt0", "10.199.0.0/24".parse().expect("subnet"));
        let m = mapping(8080, "10.199.0.2", 80);
        let rules = [
            rule(Chain::Prerouting, 4, "sandbox/a", m),
            rule(Chain::Prerouting, 5, "sandbox/a", m),
            rule(Chain::Output, 6, "sandbox/a", m),
        ];
        let change = ports.diff("sandbox/a", &[m], &rules, true);
        assert!(change.added.is_empty() && change.removed.is_empty());
        assert!(!change.is_empty(), "the duplicate is deleted");
        assert_eq!(change.commands.len(), 1, "{:?}", change.commands);
    }

    #[test]
    fn a_repeated_host_port_is_refused() {
        let twice = [mapping(8080, "10.0.0.2", 80), mapping(8080, "10.0.0.2", 81)];
        assert!(matches!(
            check_duplicates(&twice),
            Err(PublishedError::Duplicate { host_port: 8080 })
        ));
        assert!(check_duplicates(&twice[..1]).is_ok());
    }
}
