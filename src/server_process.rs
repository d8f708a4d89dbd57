//! `converge server`: the entity server and, beside it, the artifact registry (DESIGN.md section 3).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use converge_reconcilers::blobs::{BlobGcConfig, BlobStore};
use converge_reconcilers::engine::Executor;
use converge_reconcilers::gc_report::{GcMetrics, LastPassBoard};
use converge_watch::ServerAddress;
use converge_watch::client::{ClientOptions, EntityClient};
use tokio_util::sync::CancellationToken;

use crate::daemon::dead_sandboxes::run_dead_sandbox_cleanup;
use crate::daemon::flags::parse_duration;
use crate::daemon::gc::{GcShared, LastPassFile, last_pass_path, run_blob_gc_over};
use crate::server::leader::{
    BLOB_GC_TASK, CLUSTER_TASK, FencedBlobStore, LeaderError, Leadership, run_while_leader,
};
use crate::server::store::Store;

use crate::registry::{ArtifactStore, ArtifactStoreError, RegistryArgs, RegistryError};
use crate::server::{
    LocalClientError, PreparedServer, ServerArgs, ServerConfig, ServerError, StoreUrl,
};

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
    /// Lease TTL of the leader elections for cluster-wide work (blob GC, dead-sandbox
    /// cleanup) on an etcd store: a dead leader is replaced within about this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub leader_ttl: Duration,
    /// How long a sandbox stays `dead` before the leader deletes its entity.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub dead_sandbox_horizon: Duration,
    /// The CA the server's own client verifies a TLS listener with (the global `--tls-ca`,
    /// set by `main`); without it the server's certificate file is trusted.
    #[arg(skip)]
    pub tls_ca: Option<PathBuf>,
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
    /// An election for cluster-wide work could not be set up (bad `--leader-ttl`).
    #[error("cannot set up leader election")]
    Leader(#[from] LeaderError),
    /// The server's own client (for cluster-wide work) could not be configured.
    #[error(transparent)]
    LocalClient(#[from] LocalClientError),
}

/// What the cluster-wide work of one server shares: how it reaches its own entity server,
/// the store it serves, and the elections (blob GC; dead-sandbox cleanup).
#[derive(Clone)]
struct ClusterWork {
    address: ServerAddress,
    options: ClientOptions,
    store: Arc<dyn Store>,
    blob_gc: Arc<dyn Leadership>,
    cluster: Arc<dyn Leadership>,
}

impl ClusterWork {
    fn new(
        prepared: &PreparedServer,
        args: &ServerProcessArgs,
    ) -> Result<Self, ServerProcessError> {
        let identity = format!(
            "{}/{}/{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown-host".to_string()),
            std::process::id(),
            args.server.listen
        );
        let (address, options) = prepared.local_client(args.tls_ca.as_deref())?;
        Ok(Self {
            address,
            options,
            store: prepared.store(),
            blob_gc: prepared.leadership(BLOB_GC_TASK, &identity, args.leader_ttl)?,
            cluster: prepared.leadership(CLUSTER_TASK, &identity, args.leader_ttl)?,
        })
    }

    /// Connects to the server (retrying every 200 ms for about 20 s, until `stop`);
    /// `None` when it never answered or `stop` came first.
    async fn client(&self, stop: &CancellationToken) -> Option<EntityClient> {
        let addrs = std::slice::from_ref(&self.address);
        for _ in 0..100 {
            tokio::select! {
                () = stop.cancelled() => return None,
                connected = EntityClient::connect_with(addrs, &self.options) => {
                    match connected {
                        Ok(client) => return Some(client),
                        Err(e) => tracing::debug!(error = %e, "own entity server not answering yet"),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }
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
    let mut config = ServerConfig::from(args.server.clone());
    config.token_file = token_file.clone();
    let prepared = crate::server::prepare(config).await?;
    let cluster = ClusterWork::new(&prepared, &args)?;
    // Spawned only once nothing can fail any more before serving, so an early error
    // leaves no campaign behind.
    let mut work = Vec::new();
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
        work.push(tokio::spawn(blob_gc(
            store.clone(),
            args.clone(),
            cluster.clone(),
            stop.clone(),
        )));
        Some(tokio::spawn(crate::registry::serve_registry_secure(
            store,
            listener,
            security,
            stop.clone().cancelled_owned(),
        )))
    };
    work.push(tokio::spawn(cluster_term_work(
        cluster.clone(),
        args.dead_sandbox_horizon,
        stop.clone(),
    )));
    let server_stop = stop.clone();
    let server = prepared.serve(async move {
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
    // Cluster work resigns its leadership on the way out, so another server takes over
    // at once instead of after the lease TTL.
    for handle in work {
        if tokio::time::timeout(RESIGN_WAIT, handle).await.is_err() {
            tracing::warn!("cluster work did not stop in time; its lease expires on its own");
        }
    }
    Ok(served?)
}

/// How long shutdown waits for cluster work to stop and resign.
const RESIGN_WAIT: Duration = Duration::from_secs(5);

/// The work that runs on one server of the cluster at a time, only while this server leads
/// the `cluster` election: dead-sandbox cleanup over the store it serves (each deletion
/// fenced by the term) and the service endpoints controller (through the server's own
/// client, so with its token and TLS). Both stop when the term is lost and start again on
/// the next one (see `docs/leader.md`).
async fn cluster_term_work(cluster: ClusterWork, horizon: Duration, stop: CancellationToken) {
    let store = cluster.store.clone();
    let (address, options) = (cluster.address.clone(), cluster.options.clone());
    run_while_leader(cluster.cluster.clone(), stop, move |term, until| {
        let cleanup = run_dead_sandbox_cleanup(store.clone(), term, horizon, false, until.clone());
        let services = crate::daemon::services::connect_and_run(
            address.clone(),
            options.clone(),
            crate::daemon::services::ServiceControllerConfig::default(),
            until,
        );
        async move {
            let ((), served) = tokio::join!(cleanup, services);
            if let Err(e) = served {
                tracing::warn!(error = %e, "the service controller is off");
            }
        }
    })
    .await;
}

/// Blob GC over the registry's store, reading artifacts from this very server (through
/// its own client, with the server's token and TLS): waits until the server answers, then,
/// only while this server leads the blob-gc election, runs passes every `--gc-interval`
/// (and when an artifact is archived), each deletion fenced by the term, until `stop`. Its
/// last pass is recorded beside the artifact store (`gc-last-pass.json`, what `converge
/// describe node --data-dir` reads). A server that never answers leaves blob GC off, with
/// a warning.
async fn blob_gc(
    store: ArtifactStore,
    args: ServerProcessArgs,
    cluster: ClusterWork,
    stop: CancellationToken,
) {
    let Some(client) = cluster.client(&stop).await else {
        if !stop.is_cancelled() {
            tracing::warn!(address = %cluster.address, "blob GC is off: the entity server did not answer");
        }
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
    let leadership = cluster.blob_gc.clone();
    let blobs: Arc<dyn BlobStore> = Arc::new(store);
    run_while_leader(cluster.blob_gc.clone(), stop, move |term, until| {
        let fenced = Arc::new(FencedBlobStore::new(
            blobs.clone(),
            leadership.clone(),
            term,
        ));
        run_blob_gc_over(
            fenced,
            client.clone(),
            config.clone(),
            args.gc_interval,
            shared.clone(),
            until,
        )
    })
    .await;
}
