//! The OCI distribution registry served by the server process, backed by the artifact store.
//!
//! [`serve_registry`] runs the `/v2/` API of [`api::registry_router`] over an
//! [`ArtifactStore`] until its shutdown future resolves.

pub mod api;
pub mod error;
pub mod media;
pub mod names;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;

pub use api::registry_router;
pub use error::{ApiError, RegistryError};
pub use names::{Digest, NameError, Reference, RepoName, Tag};
pub use store::{ArtifactStore, ArtifactStoreError, BlobInfo, UploadId, UploadInfo};

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
}

impl RegistryArgs {
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
