//! The OCI distribution registry served by the server process, backed by the artifact store.
//!
//! [`serve_registry`] runs the `/v2/` API of [`api::registry_router`] over an
//! [`ArtifactStore`] until its shutdown future resolves; [`serve_registry_secure`] adds the
//! bearer token ([`auth`]) and TLS ([`tls`]).

pub mod api;
pub mod auth;
pub mod error;
pub mod media;
pub mod names;
pub mod store;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;

pub use api::{registry_router, registry_router_with};
pub use auth::RegistryAuth;
pub use error::{ApiError, RegistryError};
pub use names::{Digest, NameError, Reference, RepoName, Tag};
pub use store::{ArtifactStore, ArtifactStoreError, BlobInfo, UploadId, UploadInfo};
pub use tls::{RegistryTls, RegistryTlsError, TlsListener};

/// Default address of the registry (DESIGN.md section 3).
pub const DEFAULT_REGISTRY_ADDR: &str = "127.0.0.1:5000";

/// Registry flags shared by `converge server` and `converge up`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Address the OCI registry (`/v2/` API) listens on.
    #[arg(long = "registry", value_name = "HOST:PORT", default_value = DEFAULT_REGISTRY_ADDR)]
    pub registry: SocketAddr,
    /// Directory of the artifact store (default: `<data-dir>/artifacts`).
    #[arg(long = "artifact-dir", value_name = "DIR")]
    pub artifact_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM) the registry serves HTTPS with (may be the same file as
    /// the entity server's `--tls-cert`).
    #[arg(long, value_name = "PATH", requires = "registry_tls_key")]
    pub registry_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, mode 0600) of `--registry-tls-cert`.
    #[arg(long, value_name = "PATH", requires = "registry_tls_cert")]
    pub registry_tls_key: Option<PathBuf>,
}

/// How the registry protects itself: the token every request must carry and the TLS it
/// speaks. The default is open plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct RegistrySecurity {
    /// Which requests are let through.
    pub auth: RegistryAuth,
    /// Serve HTTPS with this identity.
    pub tls: Option<RegistryTls>,
}

impl RegistrySecurity {
    /// The scheme clients reach this registry with: `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

impl RegistryArgs {
    /// The registry's protection: the process's bearer token (required on every request when
    /// given) and TLS from `--registry-tls-cert/--registry-tls-key`. Fails, before anything
    /// listens, when the TLS files are unusable. Without a token on a non-loopback address
    /// the registry is open to the network: that is allowed, with a warning.
    pub fn security(
        &self,
        token: Option<&converge_watch::client::BearerToken>,
    ) -> Result<RegistrySecurity, RegistryError> {
        let tls = match (&self.registry_tls_cert, &self.registry_tls_key) {
            (Some(cert), Some(key)) => Some(RegistryTls::from_files(cert, key)?),
            _ => None,
        };
        if token.is_none() && !self.registry.ip().is_loopback() {
            tracing::warn!(addr = %self.registry, "the registry serves without authentication (no --token-file)");
        }
        Ok(RegistrySecurity {
            auth: RegistryAuth::from_token(token),
            tls,
        })
    }

    /// The artifact store directory: `--artifact-dir`, else `<data_dir>/artifacts`.
    pub fn artifact_dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.artifact_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("artifacts"))
    }
}

/// Binds `addr` and serves the registry over `store` until `shutdown` resolves.
/// Fails with [`RegistryError::Bind`] if the address cannot be bound, or
/// [`RegistryError::Serve`] if the server stops with an I/O error.
pub async fn serve_registry(
    store: ArtifactStore,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| RegistryError::Bind { addr, source })?;
    serve_registry_on(store, listener, shutdown).await
}

/// Serves the registry on an already bound listener with `security` (token check on every
/// request, HTTPS when it has TLS) until `shutdown` resolves; in-flight requests are
/// finished first. Fails with [`RegistryError::Serve`] if the server stops with an I/O error.
pub async fn serve_registry_secure(
    store: ArtifactStore,
    listener: TcpListener,
    security: RegistrySecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, root = %store.root().display(), scheme = security.scheme(), token_required = security.auth.is_required(), "registry listening");
    }
    let app = registry_router_with(store, security.auth);
    match security.tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(RegistryError::Serve),
        Some(tls) => {
            let listener = TlsListener::new(listener, &tls).map_err(RegistryError::Serve)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(RegistryError::Serve)
        }
    }
}

/// Serves the registry on an already bound listener (tests bind `127.0.0.1:0`) until
/// `shutdown` resolves; in-flight requests are finished first.
pub async fn serve_registry_on(
    store: ArtifactStore,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, root = %store.root().display(), "registry listening");
    }
    axum::serve(listener, registry_router(store))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(RegistryError::Serve)
}
