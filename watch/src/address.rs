//! Server addresses in the form `--listen` and `--server` take: `unix:PATH` or `tcp:HOST:PORT`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where an entity server listens, or where a client finds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddress {
    /// A unix socket path.
    Unix(PathBuf),
    /// `HOST:PORT` over TCP.
    Tcp(String),
}

/// An address that is neither `unix:PATH` nor `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server address {0:?}: expected unix:PATH or tcp:HOST:PORT")]
pub struct AddressError(pub String);

impl FromStr for ServerAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(AddressError(s.to_string()));
            }
            return Ok(ServerAddress::Unix(PathBuf::from(path)));
        }
        if let Some(hp) = s.strip_prefix("tcp:") {
            let port_ok = hp
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(AddressError(s.to_string()));
            }
            return Ok(ServerAddress::Tcp(hp.to_string()));
        }
        Err(AddressError(s.to_string()))
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            ServerAddress::Tcp(hp) => write!(f, "tcp:{hp}"),
        }
    }
}

/// The default address `converge up` listens on and clients use.
pub const DEFAULT_SERVER: &str = "unix:/var/lib/converge/entity.sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_and_tcp_addresses_parse_and_print_back() {
        for s in [
            "unix:/tmp/x.sock",
            "tcp:127.0.0.1:7000",
            "tcp:[::1]:7000",
            "tcp:host:1",
        ] {
            assert_eq!(s.parse::<ServerAddress>().expect(s).to_string(), s);
        }
    }

    #[test]
    fn other_forms_are_refused() {
        for s in [
            "",
            "unix:",
            "tcp:host",
            "tcp::80",
            "tcp:h:99999",
            "http://x",
            "/tmp/s",
        ] {
            assert!(s.parse::<ServerAddress>().is_err(), "{s}");
        }
    }
}
