//! Free loopback ports for tests that must name a listen address before a process binds it.

use std::net::{SocketAddr, TcpListener};

/// A `127.0.0.1` address whose port was free a moment ago: found by binding port 0 and
/// releasing the listener, so another process may take it before the caller does (tests
/// accept that small race). Fails only if no loopback port can be bound at all.
pub fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The port of [`free_loopback_addr`]; fails the same way.
pub fn free_loopback_port() -> std::io::Result<u16> {
    free_loopback_addr().map(|a| a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_loopback_port_can_be_bound_right_after() {
        let addr = free_loopback_addr().expect("free address");
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        TcpListener::bind(addr).expect("still free");
    }
}
