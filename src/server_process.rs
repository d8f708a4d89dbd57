//! `converge server`: the entity server and, beside it, the artifact registry (DESIGN.md section 3).

use std::path::PathBuf;
use std::time::Duration;

use converge_reconcilers::blobs::BlobGcConfig;
use converge_reconcilers::engine::Executor;
use converge_reconcilers::gc_report::{GcMetrics, LastPassBoard};
use converge_watch::client::{ClientOptions, EntityClient};
use tokio_util::sync::CancellationToken;

use crate::daemon::flags::parse_duration;
use crate::daemon::gc::{GcShared, LastPassFile, last_pass_path, run_blob_gc};

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
    /// Period of blob garbage collection over the registry's store (the store lives here,
    /// so its blob GC runs here).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub gc_interval: Duration,
    /// How long an unreferenced blob is kept before collection.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub blob_grace: Duration,
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
    /// The token file the registry would require is unusable.
    #[error("the registry cannot use the token file: {0}")]
    RegistryToken(#[source] converge_watch::client::CredentialError),
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
    tokio::spawn(crate::daemon::services::run_beside_server(
        args.server.listen.clone(),
        token_file.clone(),
        stop.clone(),
    ));
    let registry = if args.no_registry {
        None
    } else {
        let dir = args.artifact_dir();
        let store = ArtifactStore::open(&dir)
            .await
            .map_err(|source| ServerProcessError::ArtifactStore { dir, source })?;
        let addr = args.registry.registry;
        let token = token_file
            .as_deref()
            .map(converge_watch::client::BearerToken::from_file)
            .transpose()
            .map_err(ServerProcessError::RegistryToken)?;
        let security = args.registry.security(token.as_ref())?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RegistryError::Bind { addr, source })?;
        {
            tokio::spawn(blob_gc(
                store.clone(),
                args.clone(),
                token_file.clone(),
                stop.clone(),
            ));
        }
        Some(tokio::spawn(crate::registry::serve_registry_secure(
            store,
            listener,
            security,
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

/// Blob GC over the registry's store, reading artifacts from this very server: waits until
/// the server answers, then runs passes every `--gc-interval` (and when an artifact is
/// archived) until `stop`. Its last pass is recorded beside the artifact store
/// (`gc-last-pass.json`, what `converge describe node --data-dir` reads). A server that never
/// answers (it failed to start, or listens with TLS, which this in-process client does not
/// speak yet) leaves blob GC off, with a warning.
async fn blob_gc(
    store: ArtifactStore,
    args: ServerProcessArgs,
    token_file: Option<PathBuf>,
    stop: CancellationToken,
) {
    let options = match ClientOptions::from_token_file(token_file.as_deref()) {
        Ok(options) => options,
        Err(e) => {
            tracing::warn!(error = %e, "blob GC is off: cannot read the token file");
            return;
        }
    };
    let addrs = std::slice::from_ref(&args.server.listen);
    let mut client = None;
    for _ in 0..100 {
        tokio::select! {
            () = stop.cancelled() => return,
            connected = EntityClient::connect_with(addrs, &options) => {
                if let Ok(c) = connected {
                    client = Some(c);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(client) = client else {
        tracing::warn!("blob GC is off: the entity server did not answer");
        return;
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let data_dir = args
        .artifact_dir()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let shared = GcShared {
        executor: Executor::real(),
        engine: None,
        gc: GcMetrics::register(&mut registry),
        board: LastPassBoard::default(),
        file: LastPassFile::new(last_pass_path(&data_dir), "server"),
    };
    let config = BlobGcConfig {
        blob_grace: args.blob_grace,
    };
    run_blob_gc(store, client, config, args.gc_interval, shared, stop).await;
}
