//! `converge up`: the entity server (redb), the artifact registry and the controller in one
//! process, all stopped cleanly on SIGINT/SIGTERM.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use converge_watch::ServerAddress;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use super::controller::run_controller_with;
use super::flags::ControllerFlags;
use crate::registry::{ArtifactStore, RegistryArgs, serve_registry_secure};
use crate::server::store::DEFAULT_HISTORY_LIMIT;
use crate::server::{StoreUrl, listen, open_store, serve_bound_with_token};

/// The flags of `converge up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the entity server listens (default: unix:<data-dir>/entity.sock).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<ServerAddress>,
    /// Serve a TCP `--listen` without a token; allowed on loopback addresses only.
    #[arg(long)]
    pub insecure_no_auth: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub flags: ControllerFlags,
    /// How long a sandbox stays `dead` before its entity is deleted.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::flags::parse_duration)]
    pub dead_sandbox_horizon: std::time::Duration,
    /// The CA the embedded controller verifies an HTTPS registry with (the global
    /// `--tls-ca`, set by `main`).
    #[arg(skip)]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// The URL a local client reaches a plain-HTTP registry bound to `addr` at (an unspecified
/// address becomes loopback).
pub fn local_url(addr: SocketAddr) -> String {
    local_url_with(addr, "http")
}

/// [`local_url`] with the scheme the registry speaks (`http` or `https`).
pub fn local_url_with(addr: SocketAddr, scheme: &str) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// Runs `converge up` until `shutdown` resolves: opens `<data-dir>/entities.redb`, serves
/// it on `--listen`, serves the registry over `<data-dir>/artifacts` on `--registry`, and
/// runs the controller (single-node, with blob GC over the same store) against both.
/// Fails before serving anything when a flag is invalid, the store cannot be opened or an address cannot be bound; a component
/// failing later stops the others and its error is returned. A TCP `--listen` requires
/// the token in `token_file` (see [`crate::server::auth::listener_token`]).
pub async fn run(
    args: UpArgs,
    token_file: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let mut config = args.flags.validate()?;
    config.single_node = true;
    let listen_addr = match args.listen {
        Some(addr) => addr,
        None => format!("unix:{}", config.data_dir.join("entity.sock").display())
            .parse()
            .map_err(|e| DaemonError::Listen(format!("{e}")))?,
    };
    let token = crate::server::auth::listener_token(
        &listen_addr,
        token_file.as_deref(),
        args.insecure_no_auth,
    )
    .map_err(|e| DaemonError::Server(e.into()))?;
    config.client = converge_watch::ClientOptions {
        token: token.clone(),
        ..Default::default()
    };
    let security = args
        .registry
        .security(token.as_ref())
        .map_err(DaemonError::RegistryServe)?;
    config.registry_tls = match &args.tls_ca {
        Some(path) => Some(
            converge_watch::client::ClientTls::from_ca_file(path).map_err(|e| {
                DaemonError::Server(crate::server::auth::AuthError::Token(e).into())
            })?,
        ),
        None => None,
    };
    let scheme = security.scheme();
    let store_url = StoreUrl::Redb(config.data_dir.join("entities.redb"));
    let store = open_store(&store_url, DEFAULT_HISTORY_LIMIT).await?;
    let bound = match listen::bind(&listen_addr).await {
        Ok(bound) => bound,
        Err(e) => {
            if let Err(close) = store.close().await {
                tracing::warn!(error = %close, "cannot close the store");
            }
            return Err(DaemonError::Server(e.into()));
        }
    };
    let stop = CancellationToken::new();
    // One process owns the redb file: the trivial election, always leading.
    super::dead_sandboxes::spawn_local_cleanup(
        store.clone(),
        args.dead_sandbox_horizon,
        config.dry_run,
        stop.clone(),
    );
    let server = tokio::spawn(serve_bound_with_token(
        store,
        bound,
        token,
        stop.clone().cancelled_owned(),
    ));
    tokio::spawn(super::services::connect_and_run(
        listen_addr.clone(),
        config.client.clone(),
        super::services::ServiceControllerConfig::for_daemon(&config),
        stop.clone(),
    ));
    let artifacts = ArtifactStore::open(args.registry.artifact_dir(&config.data_dir)).await;
    let registry_listener = match artifacts {
        Ok(artifacts) => match tokio::net::TcpListener::bind(args.registry.registry).await {
            Ok(listener) => Ok((artifacts, listener)),
            Err(source) => Err(DaemonError::RegistryBind {
                addr: args.registry.registry,
                source,
            }),
        },
        Err(e) => Err(DaemonError::ArtifactStore(e)),
    };
    let (artifacts, listener) = match registry_listener {
        Ok(pair) => pair,
        Err(e) => {
            stop.cancel();
            let _ = server.await;
            return Err(e);
        }
    };
    let registry_addr = listener
        .local_addr()
        .map_err(|source| DaemonError::RegistryBind {
            addr: args.registry.registry,
            source,
        })?;
    let blob_store = artifacts.clone();
    let registry = tokio::spawn(serve_registry_secure(
        artifacts,
        listener,
        security,
        stop.clone().cancelled_owned(),
    ));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    tracing::info!(data_dir = %config.data_dir.display(), listen = %listen_addr, registry = %registry_addr, "converge up");
    let controller = run_controller_with(
        config,
        listen_addr,
        &local_url_with(registry_addr, scheme),
        Some(blob_store),
        stop.clone(),
    )
    .await;
    // The controller returns early only on failure (or once stopped): stop the rest.
    stop.cancel();
    let served = server.await;
    let registry_served = registry.await;
    controller?;
    match served {
        Ok(result) => result?,
        Err(e) => return Err(DaemonError::Task(e.to_string())),
    }
    match registry_served {
        Ok(result) => result.map_err(DaemonError::RegistryServe)?,
        Err(e) => return Err(DaemonError::Task(e.to_string())),
    }
    tracing::info!("converge up stopped");
    Ok(())
}
