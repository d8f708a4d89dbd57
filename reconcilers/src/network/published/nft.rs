//! The `nft` side of published ports: JSON commands for one converge-owned table, run atomically through `nft -j -f -`, and the table's listing parsed back.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

use ipnet::Ipv4Net;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{PortMapping, PublishedError};

/// Where Debian installs `nft`; used when present, else `nft` is looked up in `PATH`.
const NFT_PATH: &str = "/usr/sbin/nft";
/// The table family: IPv4 only (sandbox addresses are IPv4).
const FAMILY: &str = "ip";
/// Comment of the one static hairpin rule in `postrouting`.
pub(super) const HAIRPIN_COMMENT: &str = "converge: masquerade hairpin traffic";

/// The chains of a converge table: base chains of type `nat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// DNAT of connections arriving from any interface to a local address.
    Prerouting,
    /// DNAT of connections the host itself opens to one of its own (non-loopback) addresses.
    Output,
    /// Masquerade of sandbox-to-published-port traffic that goes back into the subnet.
    Postrouting,
}

impl Chain {
    /// Every chain, in the order they are created.
    pub const ALL: [Chain; 3] = [Chain::Prerouting, Chain::Output, Chain::Postrouting];

    /// The chain (and hook) name.
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
            Chain::Postrouting => "postrouting",
        }
    }

    fn from_name(name: &str) -> Option<Chain> {
        Chain::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Standard NAT priorities: `dstnat` (-100) for DNAT hooks, `srcnat` (100) otherwise.
    fn priority(self) -> i32 {
        match self {
            Chain::Prerouting | Chain::Output => -100,
            Chain::Postrouting => 100,
        }
    }
}

/// One rule as listed: where it is, its handle and its comment (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListedRule {
    pub chain: Chain,
    pub handle: u64,
    pub comment: Option<String>,
}

/// The `nft` program to run.
fn nft_program() -> &'static str {
    if Path::new(NFT_PATH).exists() {
        NFT_PATH
    } else {
        "nft"
    }
}

/// Runs one JSON batch through `nft -j -f -` (one transaction: all or nothing) and
/// returns its standard output. Fails with [`PublishedError::Nft`] carrying nft's message.
async fn run(commands: Vec<Value>) -> Result<String, PublishedError> {
    let input = json!({ "nftables": commands }).to_string();
    let spawn_error = |source| PublishedError::Spawn { source };
    let mut child = tokio::process::Command::new(nft_program())
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(spawn_error)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_error)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(PublishedError::Nft {
        status: out.status.to_string(),
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Lists `table`'s rules; a missing table is an empty list, and so is a missing `nft`
/// (without it no rule can have been made).
pub(super) async fn list(table: &str) -> Result<Vec<ListedRule>, PublishedError> {
    let command = json!({"list": {"table": {"family": FAMILY, "name": table}}});
    match run(vec![command]).await {
        Ok(out) => parse_listing(&out),
        Err(PublishedError::Spawn { source }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(Vec::new())
        }
        Err(PublishedError::Nft { message, .. })
            if message.contains("No such file or directory") =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Applies `commands` in one transaction.
pub(super) async fn apply(commands: Vec<Value>) -> Result<(), PublishedError> {
    if commands.is_empty() {
        return Ok(());
    }
    run(commands).await.map(|_| ())
}

/// Deletes `table` with everything in it; a missing table is not an error.
pub(super) async fn delete_table(table: &str) -> Result<(), PublishedError> {
    let command = json!({"delete": {"table": {"family": FAMILY, "name": table}}});
    match run(vec![command]).await {
        Ok(_) => Ok(()),
        Err(PublishedError::Nft { message, .. })
            if message.contains("No such file or directory") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Parses `nft -j list table` output into its rules (chains of other names are skipped).
fn parse_listing(out: &str) -> Result<Vec<ListedRule>, PublishedError> {
    let doc: Value = serde_json::from_str(out).map_err(|e| PublishedError::Listing {
        reason: e.to_string(),
    })?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| PublishedError::Listing {
            reason: "no \"nftables\" array".to_string(),
        })?;
    let mut rules = Vec::new();
    for rule in items.iter().filter_map(|item| item.get("rule")) {
        let Some(chain) = rule
            .get("chain")
            .and_then(Value::as_str)
            .and_then(Chain::from_name)
        else {
            continue;
        };
        let handle =
            rule.get("handle")
                .and_then(Value::as_u64)
                .ok_or_else(|| PublishedError::Listing {
                    reason: format!("a rule in {} has no handle", chain.name()),
                })?;
        let comment = rule
            .get("comment")
            .and_then(Value::as_str)
            .map(String::from);
        rules.push(ListedRule {
            chain,
            handle,
            comment,
        });
    }
    Ok(rules)
}

/// `add table` and `add chain` for every chain: idempotent, so every batch that adds
/// rules starts with them.
pub(super) fn ensure_table(table: &str) -> Vec<Value> {
    let mut commands = vec![json!({"add": {"table": {"family": FAMILY, "name": table}}})];
    for chain in Chain::ALL {
        commands.push(json!({"add": {"chain": {
            "family": FAMILY, "table": table, "name": chain.name(),
            "type": "nat", "hook": chain.name(), "prio": chain.priority(), "policy": "accept",
        }}}));
    }
    commands
}

/// Deletes rule `handle` of `chain`.
pub(super) fn delete_rule(table: &str, chain: Chain, handle: u64) -> Value {
    json!({"delete": {"rule": {
        "family": FAMILY, "table": table, "chain": chain.name(), "handle": handle,
    }}})
}

/// The DNAT rule for `mapping` in `chain` (prerouting or output), carrying `comment`:
/// `fib daddr type local [ip daddr != 127.0.0.0/8] tcp dport H dnat to IP:PORT`.
pub(super) fn dnat_rule(table: &str, chain: Chain, mapping: &PortMapping, comment: &str) -> Value {
    let mut expr = vec![json!({"match": {
        "op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local",
    }})];
    if chain == Chain::Output {
        expr.push(json!({"match": {
            "op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
            "right": {"prefix": {"addr": "127.0.0.0", "len": 8}},
        }}));
    }
    expr.push(json!({"match": {
        "op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
        "right": mapping.host_port,
    }}));
    expr.push(json!({"dnat": {"addr": mapping.ip.to_string(), "port": mapping.port}}));
    add_rule(table, chain, comment, expr)
}

/// The hairpin rule: `ip saddr S ip daddr S ct status dnat masquerade` for subnet `S`, so
/// a sandbox reaching a published port of a sandbox on the same bridge gets replies
/// through the host.
pub(super) fn hairpin_rule(table: &str, subnet: Ipv4Net) -> Value {
    let prefix =
        |addr: Ipv4Addr| json!({"prefix": {"addr": addr.to_string(), "len": subnet.prefix_len()}});
    let expr = vec![
        json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                         "right": prefix(subnet.network())}}),
        json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                         "right": prefix(subnet.network())}}),
        json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}),
        json!({"masquerade": null}),
    ];
    add_rule(table, Chain::Postrouting, HAIRPIN_COMMENT, expr)
}

fn add_rule(table: &str, chain: Chain, comment: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {
        "family": FAMILY, "table": table, "chain": chain.name(), "comment": comment, "expr": expr,
    }}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_yields_rules_with_chain_handle_and_comment() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "t", "handle": 1}},
            {"chain": {"family": "ip", "table": "t", "name": "prerouting", "handle": 1}},
            {"rule": {"family": "ip", "table": "t", "chain": "prerouting", "handle": 4,
                      "comment": "sandbox/a tcp 8080 -> 10.0.0.2:80", "expr": []}},
            {"rule": {"family": "ip", "table": "t", "chain": "postrouting", "handle": 5, "expr": []}},
            {"rule": {"family": "ip", "table": "t", "chain": "elsewhere", "handle": 6, "expr": []}}]}"#;
        let rules = parse_listing(out).expect("parses");
        assert_eq!(
            rules,
            vec![
                ListedRule {
                    chain: Chain::Prerouting,
                    handle: 4,
                    comment: Some("sandbox/a tcp 8080 -> 10.0.0.2:80".into()),
                },
                ListedRule {
                    chain: Chain::Postrouting,
                    handle: 5,
                    comment: None,
                },
            ]
        );
    }

    #[test]
    fn a_listing_that_is_not_nft_json_is_an_error_not_a_panic() {
        assert!(parse_listing("not json").is_err());
        assert!(parse_listing("{}").is_err());
        assert!(parse_listing(r#"{"nftables": [{"rule": {"chain": "output"}}]}"#).is_err());
    }
}
