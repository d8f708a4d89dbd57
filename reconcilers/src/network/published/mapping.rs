//! What one published port is (`host_port` → `ip:port`) and how its rule's comment records the owning sandbox.

use std::net::Ipv4Addr;

use super::Chain;

/// One published port: TCP `host_port` on the host's addresses forwarded to `ip:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMapping {
    /// The port on the host's addresses.
    pub host_port: u16,
    /// The sandbox's address.
    pub ip: Ipv4Addr,
    /// The port inside the sandbox.
    pub port: u16,
}

impl PortMapping {
    /// The comment of `owner`'s rules for this mapping: `<owner> tcp <H> -> <ip>:<port>`.
    /// The owner comes first, so it is what the sweep and conflict checks read.
    pub fn comment(&self, owner: &str) -> String {
        format!(
            "{owner} tcp {} -> {}:{}",
            self.host_port, self.ip, self.port
        )
    }

    /// Parses a comment written by [`PortMapping::comment`]; `None` for anything else.
    pub fn parse_comment(comment: &str) -> Option<(String, PortMapping)> {
        let mut words = comment.split(' ');
        let owner = words.next().filter(|o| !o.is_empty())?;
        let (tcp, host, arrow, target) =
            (words.next()?, words.next()?, words.next()?, words.next()?);
        if tcp != "tcp" || arrow != "->" || words.next().is_some() {
            return None;
        }
        let (ip, port) = target.split_once(':')?;
        let mapping = PortMapping {
            host_port: host.parse().ok()?,
            ip: ip.parse().ok()?,
            port: port.parse().ok()?,
        };
        Some((owner.to_string(), mapping))
    }
}

/// A converge rule as found in the table: its chain, handle, owning sandbox and mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRule {
    /// The chain it is in.
    pub chain: Chain,
    /// Its nftables handle.
    pub handle: u64,
    /// The sandbox id named in its comment.
    pub owner: String,
    /// What it forwards.
    pub mapping: PortMapping,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::network::published::nft::HAIRPIN_COMMENT;

    /// `host_port` → `ip:port`, for the tests of this module and its parent.
    pub(in crate::network::published) fn mapping(
        host_port: u16,
        ip: &str,
        port: u16,
    ) -> PortMapping {
        PortMapping {
            host_port,
            ip: ip.parse().expect("ip"),
            port,
        }
    }

    #[test]
    fn a_comment_names_the_owner_first_and_parses_back() {
        let m = mapping(8080, "10.88.0.5", 80);
        let comment = m.comment("sandbox/web-1");
        assert_eq!(comment, "sandbox/web-1 tcp 8080 -> 10.88.0.5:80");
        assert_eq!(
            PortMapping::parse_comment(&comment),
            Some(("sandbox/web-1".to_string(), m))
        );
        for other in [
            "",
            "sandbox/web-1",
            "sandbox/web-1 udp 8080 -> 10.88.0.5:80",
            "sandbox/web-1 tcp 99999 -> 10.88.0.5:80",
            "sandbox/web-1 tcp 8080 -> 10.88.0.5:80 extra",
            HAIRPIN_COMMENT,
        ] {
            assert_eq!(PortMapping::parse_comment(other), None, "{other:?}");
        }
    }
}
