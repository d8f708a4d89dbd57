//! `converge server`: the entity server and, beside it, the artifact registry (DESIGN.md section 3).

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::registry::{ArtifactStore, ArtifactStoreError, RegistryArgs, RegistryError};
use crate::server::{ServerArgs, ServerConfig, ServerError, StoreUrl};

/// The flags of `converge server`: the entity server's, the registry's, and a switch to
/// run without the registry (when another server of the cluster already serves it).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerProcessArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Do not serve the artifact registry from this process.
    #[arg(long)]
    pub no_registry: bool,
}

/// Why `converge server` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerProcessError {
    /// The entity server failed (or could not start).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The artifact store could not be opened.
    #[error("cannot open the artifact store at {dir}")]
    ArtifactStore {
        /// The store's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: ArtifactStoreError,
    },
    /// The registry failed (or could not bind its address).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl ServerProcessArgs {
    /// The artifact store directory: `--artifact-dir`, else `artifacts/` beside a redb file,
    /// else `/var/lib/converge/artifacts`.
    pub fn artifact_dir(&self) -> PathBuf {
        let data_dir = match &self.server.store {
            StoreUrl::Redb(path) => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".")),
            StoreUrl::Etcd(_) => PathBuf::from("/var/lib/converge"),
        };
        self.registry.artifact_dir(&data_dir)
    }
}

/// Runs the entity server (and the registry unless `--no-registry`) until `shutdown`
/// resolves; a failure of either stops the other. The artifact store is opened before the
/// entity server starts, so a bad `--artifact-dir` fails before anything listens.
pub async fn run(
    args: ServerProcessArgs,
    token_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerProcessError> {
    let stop = CancellationToken::new();
    let registry = if args.no_registry {
        None
    } else {
        let dir = args.artifact_dir();
        let store = ArtifactStore::open(&dir)
            .await
            .map_err(|source| ServerProcessError::ArtifactStore { dir, source })?;
        let addr = args.registry.registry;
        Some(tokio::spawn(crate::registry::serve_registry(
            store,
            addr,
            stop.clone().cancelled_owned(),
        )))
    };
    let mut config = ServerConfig::from(args.server);
    config.token_file = token_file;
    let server_stop = stop.clone();
    let server = crate::server::run_config(config, async move {
        tokio::select! {
            () = shutdown => {}
            () = server_stop.cancelled() => {}
        }
    });
    tokio::pin!(server);
    let served = match registry {
        None => server.await,
        Some(mut registry) => {
            tokio::select! {
                served = &mut server => {
                    stop.cancel();
                    let _ = registry.await;
                    served
                }
                registry_result = &mut registry => {
                    // The registry stopped first: that is a failure, stop the entity server.
                    stop.cancel();
                    let served = server.await;
                    if let Ok(Err(e)) = registry_result {
                        served?;
                        return Err(e.into());
                    }
                    served
                }
            }
        }
    };
    stop.cancel();
    Ok(served?)
}
