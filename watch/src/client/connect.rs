//! Dialing entity servers: unix sockets or TCP, failing over between several addresses, and the gRPC channel over that dialer.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{ClientError, ClientOptions};
use crate::address::ServerAddress;

/// How long dialing one address may take before the next one is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long connecting may take, over all addresses, before the server counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval of HTTP/2 pings that detect a dead connection (also while a watch is idle).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a ping may go unanswered before the connection is considered dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel to the first of `addrs` that answers (failing over along them on every
/// reconnect), with TLS when `options` carry it. Fails with `Invalid` when the TLS settings
/// are refused and `Unavailable` (naming `address`) when no server can be reached.
pub(super) async fn channel(
    addrs: &[ServerAddress],
    options: &ClientOptions,
    address: &str,
) -> Result<Channel, ClientError> {
    let dialer = Dialer::new(addrs.to_vec());
    // The URI is required by the API but never used: the dialer picks the address.
    let endpoint = match &options.tls {
        None => configure(Endpoint::from_static("http://localhost")),
        Some(tls) => {
            let domain = tls.domain.clone().unwrap_or_else(|| tls_domain(addrs));
            let config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
                .domain_name(domain);
            configure(Endpoint::from_static("https://localhost"))
                .tls_config(config)
                .map_err(|e| ClientError::Invalid(format!("TLS settings refused: {e}")))?
        }
    };
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dialer = dialer.clone();
            async move { dialer.dial().await }
        }))
        .await
        .map_err(|e| ClientError::Unavailable {
            address: address.to_string(),
            source: Box::new(e),
        })?;
    Ok(channel)
}

/// The name a TLS server certificate is checked against: the host of the first TCP
/// address, else `localhost`.
fn tls_domain(addrs: &[ServerAddress]) -> String {
    addrs
        .iter()
        .find_map(|a| match a {
            ServerAddress::Tcp(host_port) => host_port.rsplit_once(':').map(|(host, _)| {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }),
            ServerAddress::Unix(_) => None,
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// Applies the connection settings every endpoint shares.
fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// One connection to an entity server, over either transport.
pub(super) type Connection = TokioIo<Either<UnixStream, TcpStream>>;

/// Dials a list of server addresses, starting with the one that answered last time, so a
/// client sticks to a working server and moves to the next one only when it stops answering.
#[derive(Debug, Clone)]
pub(super) struct Dialer {
    addresses: Arc<[ServerAddress]>,
    preferred: Arc<AtomicUsize>,
}

impl Dialer {
    /// A dialer over `addresses`, preferring the first.
    pub(super) fn new(addresses: Vec<ServerAddress>) -> Self {
        Self {
            addresses: addresses.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Connects to the first address that answers, trying each once in order from the
    /// preferred one. Fails with an error listing every address and why it failed.
    pub(super) async fn dial(&self) -> io::Result<Connection> {
        let count = self.addresses.len();
        if count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no entity server address",
            ));
        }
        let start = self.preferred.load(Ordering::Relaxed) % count;
        let mut failures = Vec::with_capacity(count);
        for step in 0..count {
            let index = (start + step) % count;
            let address = &self.addresses[index];
            match tokio::time::timeout(DIAL_TIMEOUT, dial_one(address)).await {
                Ok(Ok(stream)) => {
                    if index != start {
                        tracing::info!(%address, "failed over to another entity server");
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => failures.push(format!("{address}: {e}")),
                Err(_) => failures.push(format!("{address}: no answer within {DIAL_TIMEOUT:?}")),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            failures.join("; "),
        ))
    }
}

async fn dial_one(address: &ServerAddress) -> io::Result<Either<UnixStream, TcpStream>> {
    match address {
        ServerAddress::Unix(path) => Ok(Either::Left(UnixStream::connect(path).await?)),
        ServerAddress::Tcp(host_port) => {
            let stream = TcpStream::connect(host_port.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok(Either::Right(stream))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dialing_nothing_reachable_lists_every_address() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = ServerAddress::Unix(dir.path().join("a.sock"));
        let b = ServerAddress::Unix(dir.path().join("b.sock"));
        let err = Dialer::new(vec![a, b])
            .dial()
            .await
            .expect_err("nothing listens");
        let message = err.to_string();
        assert!(
            message.contains("a.sock") && message.contains("b.sock"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn the_dialer_sticks_to_the_address_that_answered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = ServerAddress::Unix(dir.path().join("missing.sock"));
        let path = dir.path().join("live.sock");
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let dialer = Dialer::new(vec![missing, ServerAddress::Unix(path)]);
        dialer.dial().await.expect("second address answers");
        assert_eq!(dialer.preferred.load(Ordering::Relaxed), 1);
        dialer.dial().await.expect("still answers");
        assert_eq!(dialer.preferred.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_empty_list_is_refused() {
        let err = Dialer::new(vec![]).dial().await.expect_err("no addresses");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
