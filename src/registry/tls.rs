//! TLS for the registry: a rustls server configuration from the PEM identity the entity
//! server uses ([`crate::tls::ServerTls`]), and an axum [`Listener`] that hands axum only
//! connections whose handshake finished (each handshake runs in its own task, bounded by a
//! timeout, so a slow or silent client never holds up the others).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::tls::{ServerTls, TlsError};

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for axum to take them.
const QUEUE: usize = 64;

/// Why the registry's TLS settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryTlsError {
    /// A certificate or key file is unreadable, holds no PEM, or the key is not private.
    #[error(transparent)]
    Files(#[from] TlsError),
    /// The certificate PEM does not parse.
    #[error("the registry TLS certificate is not valid PEM: {0}")]
    Certificate(#[source] rustls::pki_types::pem::Error),
    /// The key PEM does not parse.
    #[error("the registry TLS key is not a valid PEM private key: {0}")]
    Key(#[source] rustls::pki_types::pem::Error),
    /// The certificate file holds no certificate.
    #[error("the registry TLS certificate file holds no certificate")]
    NoCertificate,
    /// rustls refused the identity (e.g. a key that does not match the certificate).
    #[error("the registry TLS certificate and key were refused: {0}")]
    Config(#[source] rustls::Error),
}

/// A checked TLS server configuration for the registry. Cheap to clone.
#[derive(Clone)]
pub struct RegistryTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for RegistryTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryTls { key: <redacted> }")
    }
}

impl RegistryTls {
    /// Reads and checks the certificate chain and private key (see
    /// [`ServerTls::from_files`]: the key file must be private), then builds the rustls
    /// configuration. Fails, before anything listens, on an unreadable or malformed file or
    /// a key that does not match the certificate.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, RegistryTlsError> {
        Self::new(&ServerTls::from_files(cert, key)?)
    }

    /// Builds the rustls configuration (TLS 1.2 and 1.3, ring, HTTP/1.1, no client
    /// certificates) for `identity`. Fails on PEM that does not parse or a key that does
    /// not match the certificate.
    pub fn new(identity: &ServerTls) -> Result<Self, RegistryTlsError> {
        let certs = CertificateDer::pem_slice_iter(identity.cert_pem())
            .collect::<Result<Vec<_>, _>>()
            .map_err(RegistryTlsError::Certificate)?;
        if certs.is_empty() {
            return Err(RegistryTlsError::NoCertificate);
        }
        let key =
            PrivateKeyDer::from_pem_slice(identity.key_pem()).map_err(RegistryTlsError::Key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(RegistryTlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(RegistryTlsError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// A TCP listener whose connections come out of a finished TLS handshake. Dropping it stops
/// accepting (in-flight handshakes end within [`HANDSHAKE_TIMEOUT`]).
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` with `tls`. Fails only when the listener has no local
    /// address.
    pub fn new(listener: TcpListener, tls: &RegistryTls) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, incoming) = mpsc::channel(QUEUE);
        let accepting = tokio::spawn(accept_loop(listener, tls.acceptor.clone(), tx));
        Ok(Self {
            incoming,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this receiver is gone: never here.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "registry cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "registry TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "registry TLS handshake timed out"),
            }
        });
    }
}
