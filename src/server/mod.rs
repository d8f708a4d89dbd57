//! The entity server: the gRPC API over a store, its listeners and shutdown.

pub mod auth;
pub mod grpc;
pub mod host_ports;
pub mod leader;
pub mod listen;
mod prepared;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use converge_watch::ServerAddress;
use converge_watch::address::DEFAULT_SERVER;
use converge_watch::client::BearerToken;
use converge_watch::proto::entities_server::EntitiesServer;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

pub use auth::{AuthError, RequireBearer};
pub use grpc::EntitiesService;
pub use listen::{Bound, ListenError};
pub use prepared::{LocalClientError, PreparedServer, prepare};
use store::{DEFAULT_HISTORY_LIMIT, RedbStore, Store, StoreError};

/// Largest request the server accepts: a batch of puts may carry many entities of up to
/// 1 MiB each.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// How often the server pings an idle connection.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Failures of the entity server as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store {url}")]
    OpenStore {
        /// The store URL.
        url: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The store failed to close cleanly at shutdown.
    #[error("cannot close the store cleanly")]
    CloseStore(#[source] StoreError),
    /// The listener could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The token file or the authentication flags were refused.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The TLS certificate or key was refused.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The TLS certificate and key do not form a usable identity.
    #[error("the TLS certificate and key are not usable")]
    TlsConfig(#[source] tonic::transport::Error),
    /// The gRPC server failed while serving.
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// A `--store` value that is neither `redb:PATH` nor `etcd:URL[,URL...]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid store {0:?}: expected redb:PATH or etcd:URL[,URL...]")]
pub struct StoreUrlError(pub String);

/// Where the entity server keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An embedded redb file.
    Redb(PathBuf),
    /// An etcd cluster, by client URLs.
    Etcd(Vec<String>),
}

impl FromStr for StoreUrl {
    type Err = StoreUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("redb:") {
            if path.is_empty() {
                return Err(StoreUrlError(s.to_string()));
            }
            return Ok(StoreUrl::Redb(PathBuf::from(path)));
        }
        if let Some(urls) = s.strip_prefix("etcd:") {
            let endpoints: Vec<String> = urls.split(',').map(str::trim).map(String::from).collect();
            if endpoints.iter().any(String::is_empty) {
                return Err(StoreUrlError(s.to_string()));
            }
            return Ok(StoreUrl::Etcd(endpoints));
        }
        Err(StoreUrlError(s.to_string()))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Redb(path) => write!(f, "redb:{}", path.display()),
            StoreUrl::Etcd(endpoints) => write!(f, "etcd:{}", endpoints.join(",")),
        }
    }
}

/// Everything `serve` needs, as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where entities are kept.
    pub store: StoreUrl,
    /// Where clients connect.
    pub listen: ServerAddress,
    /// Revisions of history kept for watches.
    pub history_limit: u64,
    /// The bearer token file (`--token-file`); required on TCP unless `insecure_no_auth`.
    pub token_file: Option<PathBuf>,
    /// Serve TCP without a token; allowed on loopback addresses only.
    pub insecure_no_auth: bool,
    /// TLS certificate chain (PEM) for a TCP listener; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, mode 0600) for a TCP listener; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// The flags of `converge server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Where entities are kept: redb:PATH or etcd:URL[,URL...].
    #[arg(long, value_name = "redb:PATH|etcd:URL,...")]
    pub store: StoreUrl,
    /// Where to listen: unix:PATH or tcp:HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_SERVER)]
    pub listen: ServerAddress,
    /// Revisions of history kept so watches can resume.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HISTORY_LIMIT)]
    pub history_limit: u64,
    /// Serve TCP without authentication; refused unless the address is loopback.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// TLS certificate chain (PEM) for a TCP listener.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, mode 0600) for a TCP listener.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl From<ServerArgs> for ServerConfig {
    fn from(args: ServerArgs) -> Self {
        Self {
            store: args.store,
            listen: args.listen,
            history_limit: args.history_limit,
            token_file: None,
            insecure_no_auth: args.insecure_no_auth,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
        }
    }
}

/// Opens the store `url` names. A redb file that cannot be opened (e.g. held by another
/// server) or an etcd cluster that does not answer fails with `OpenStore`.
pub async fn open_store(url: &StoreUrl, history_limit: u64) -> Result<Arc<dyn Store>, ServerError> {
    let opened: Result<Arc<dyn Store>, StoreError> = match url {
        StoreUrl::Redb(path) => RedbStore::open(path, history_limit)
            .await
            .map(|store| Arc::new(store) as Arc<dyn Store>),
        StoreUrl::Etcd(endpoints) => {
            let config = store::etcd::EtcdConfig::new(endpoints.clone());
            store::etcd::EtcdStore::connect(config)
                .await
                .map(|store| Arc::new(store) as Arc<dyn Store>)
        }
    };
    opened.map_err(|source| ServerError::OpenStore {
        url: url.to_string(),
        source,
    })
}

/// Binds `listen` and serves `store` until `shutdown` completes; see [`serve_bound`].
pub async fn serve(
    store: Arc<dyn Store>,
    listen: &ServerAddress,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let bound = match listen::bind(listen).await {
        Ok(bound) => bound,
        Err(e) => {
            if let Err(close) = store.close().await {
                tracing::warn!(error = %close, "cannot close the store");
            }
            return Err(e.into());
        }
    };
    serve_bound(store, bound, shutdown).await
}

/// Serves `store` on an already bound listener, without authentication, until `shutdown`
/// completes; see [`serve_bound_with_token`].
pub async fn serve_bound(
    store: Arc<dyn Store>,
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_bound_with_token(store, bound, None, shutdown).await
}

/// Serves `store` on an already bound listener until `shutdown` completes, then shuts down
/// gracefully: stops accepting, ends every watch stream, lets in-flight unary calls finish,
/// closes (flushes) the store and removes the unix socket file. Returns after all of that;
/// the first failure is reported, but every step is attempted. With `token`, every call on
/// a TCP listener must carry it (see [`RequireBearer`]); a unix socket never needs it.
pub async fn serve_bound_with_token(
    store: Arc<dyn Store>,
    bound: Bound,
    token: Option<BearerToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_bound_secure(store, bound, token, None, shutdown).await
}

/// Like [`serve_bound_with_token`], and with `tls` a TCP listener speaks TLS with that
/// identity (a unix socket never does). An unusable certificate or key fails with
/// `TlsConfig` before anything is served; the store is closed then too.
pub async fn serve_bound_secure(
    store: Arc<dyn Store>,
    bound: Bound,
    token: Option<BearerToken>,
    tls: Option<crate::tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let mut builder = tonic::transport::Server::builder();
    if let (Bound::Tcp(_), Some(tls)) = (&bound, &tls) {
        builder = match builder.tls_config(tls.config()) {
            Ok(builder) => builder,
            Err(e) => {
                if let Err(close) = store.close().await {
                    tracing::warn!(error = %close, "cannot close the store");
                }
                return Err(ServerError::TlsConfig(e));
            }
        };
    }
    let check = match (&bound, &token) {
        (Bound::Tcp(_), Some(token)) => RequireBearer::new(token),
        _ => RequireBearer::open(),
    };
    let token = CancellationToken::new();
    let service = InterceptedService::new(
        EntitiesServer::new(EntitiesService::new(Arc::clone(&store), token.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        check,
    );
    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            tracing::info!("entity server shutting down");
            token.cancel();
        }
    };
    // Pings find clients that vanished without closing (a partitioned node), so their
    // watch streams do not linger.
    let router = builder
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(service);
    let (served, socket) = match bound {
        Bound::Unix { listener, path } => {
            tracing::info!(path = %path.display(), "entity server listening");
            let served = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal)
                .await;
            (served, Some(path))
        }
        Bound::Tcp(listener) => {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "entity server listening");
            }
            let served = router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
                .await;
            (served, None)
        }
    };
    token.cancel();
    let closed = store.close().await;
    if let Some(path) = socket {
        Bound::cleanup(&path);
    }
    served.map_err(ServerError::Transport)?;
    closed.map_err(ServerError::CloseStore)?;
    tracing::info!("entity server stopped");
    Ok(())
}

/// Runs `converge server`: opens the store, serves it until `shutdown`, closes it.
pub async fn run(
    args: ServerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_config(args.into(), shutdown).await
}

/// Like [`run`], from a [`ServerConfig`]. Checks the authentication rule (see
/// [`auth::listener_token`]) before opening or binding anything.
pub async fn run_config(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    prepare(config).await?.serve(shutdown).await
}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed when the future is
/// first polled; if they cannot be, it falls back to Ctrl-C, and failing that never completes
/// (logging why).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    async {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("received SIGTERM"),
                    _ = int.recv() => tracing::info!("received SIGINT"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot install signal handlers; waiting for Ctrl-C");
                if let Err(e) = tokio::signal::ctrl_c().await {
                    tracing::error!(error = %e, "cannot wait for Ctrl-C either; never shutting down");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
