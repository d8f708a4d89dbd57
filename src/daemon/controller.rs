//! The controller half of the daemon: watch sandboxes of this node from the entity server,
//! reconcile them onto containerd, follow containerd's task exits, run the GC
//! reconcilers, serve metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::containerd::{ContainerdClient, LABEL_ENTITY_ID};
use converge_reconcilers::engine::{
    BucketConfig, Controller, ControllerConfig, EngineMetrics, Executor, QueueConfig, RunnerConfig,
    Shutdown, Trigger, WriteTracker,
};
use converge_reconcilers::gc_report::{GcMetrics, LastPassBoard};
use converge_reconcilers::sandbox::{
    Backoff, SandboxConfig, SandboxMetrics, SandboxNetworking, SandboxReconciler,
    spawn_exit_watcher,
};
use converge_watch::cache::Cache;
use converge_watch::client::{EntityClient, ListFilter};
use converge_watch::stream::{StreamConfig, watch_stream};
use converge_watch::{EntityId, Kind, ServerAddress};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use super::flags::{ControllerFlags, DaemonConfig};
use super::gc::{GcShared, LastPassFile, gc_controllers, last_pass_path};
use crate::registry::ArtifactStore;

/// Default `--registry-url`.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:5000";

/// The flags of `converge controller` (the server comes from the global `--server`).
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Where the artifact registry serves `cluster.local:5000/...` images.
    #[arg(long, value_name = "URL", default_value = DEFAULT_REGISTRY_URL)]
    pub registry_url: String,
    /// Another entity server to fail over to when `--server` stops answering (repeatable;
    /// tried in order).
    #[arg(long = "fallback-server", value_name = "ADDR")]
    pub fallback_servers: Vec<ServerAddress>,
    #[command(flatten)]
    pub flags: ControllerFlags,
}

/// The sandboxes a controller of `config` watches: its node's, plus unassigned ones on a
/// single node.
pub fn sandbox_filter(config: &DaemonConfig) -> ListFilter {
    ListFilter {
        kind: Some(Kind::Sandbox),
        node: Some(config.node_id.clone()),
        include_unassigned: config.single_node,
    }
}

/// The containerd client of `config` (namespace, socket, runc root). Fails only on an
/// unusable socket path; containerd itself is contacted lazily.
pub fn containerd_client(config: &DaemonConfig) -> Result<ContainerdClient, DaemonError> {
    let client = ContainerdClient::new(&config.containerd_socket, &config.namespace)
        .map_err(DaemonError::Containerd)?;
    Ok(match &config.runc_root {
        Some(root) => client.with_runc_root(root),
        None => client,
    })
}

/// The sandbox reconciler's settings from the daemon's.
pub fn sandbox_config(config: &DaemonConfig) -> SandboxConfig {
    let mut sandbox = SandboxConfig::new(&config.node_id, config.single_node, config.log_root());
    sandbox.default_stop_grace = config.stop_grace;
    sandbox.volume_root = config.data_dir.join("volumes");
    sandbox.log_driver = config.log_driver.clone();
    sandbox.restart_backoff = Backoff {
        base: config.restart_backoff,
        cap: Duration::from_secs(300).max(config.restart_backoff),
    };
    sandbox
}

/// Ids of the sandboxes owning containers in containerd (by their entity-id label), so that
/// containers of sandboxes deleted while no controller looked are torn down too.
pub async fn sandboxes_in_containerd(
    containerd: &ContainerdClient,
) -> Result<Vec<EntityId>, DaemonError> {
    let records = containerd
        .list_containers(&[])
        .await
        .map_err(DaemonError::Containerd)?;
    let mut ids: Vec<EntityId> = records
        .iter()
        .filter_map(|r| r.labels.get(LABEL_ENTITY_ID)?.parse::<EntityId>().ok())
        .filter(|id| id.kind() == Kind::Sandbox)
        .collect();
    ids.sort_by_key(ToString::to_string);
    ids.dedup();
    Ok(ids)
}

/// Connects to the entity server (or, failing that, to a fallback server), retrying every
/// second until one answers or `stop` is cancelled (`None` then). The client fails over
/// between them by itself afterwards.
async fn connect(
    server: &ServerAddress,
    fallbacks: &[ServerAddress],
    options: &converge_watch::ClientOptions,
    stop: &CancellationToken,
) -> Option<EntityClient> {
    let servers: Vec<ServerAddress> = std::iter::once(server.clone())
        .chain(fallbacks.iter().cloned())
        .collect();
    loop {
        match EntityClient::connect_with(&servers, options).await {
            Ok(client) => return Some(client),
            Err(e) => tracing::warn!(%server, error = %e, "entity server not reachable yet"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Enqueues, once the cache is ready, every sandbox that still owns containers, and the
/// `leftovers` (sandboxes with an address, volumes or logs on this node), so teardowns a
/// crash interrupted are finished.
fn spawn_initial_sweep(
    containerd: ContainerdClient,
    cache: Cache,
    trigger: Trigger<EntityId>,
    leftovers: Vec<EntityId>,
) {
    tokio::spawn(async move {
        cache.wait_ready().await;
        let owning = match sandboxes_in_containerd(&containerd).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers for the initial sweep");
                Vec::new()
            }
        };
        for id in owning.into_iter().chain(leftovers) {
            if trigger.repair(id).is_err() {
                break;
            }
        }
    });
}

/// Runs the sandbox controller and the orphan and image GC controllers against `server`
/// until `stop` is cancelled; see [`run_controller_with`] (no artifact store, so no blob GC).
pub async fn run_controller(
    config: DaemonConfig,
    server: ServerAddress,
    registry_url: &str,
    stop: CancellationToken,
) -> Result<(), DaemonError> {
    run_controller_with(config, server, registry_url, None, stop).await
}

/// Runs the sandbox controller, the orphan and image GC controllers, and (when `artifacts`
/// is given: the registry's store lives in this process) the blob GC controller against
/// `server` until `stop` is cancelled, then shuts down gracefully (in-flight reconciles
/// finish). After each GC pass `<data-dir>/gc-last-pass.json` is rewritten (see
/// [`super::gc`]). Fails only on bad settings (registry URL, containerd socket path) or
/// when the HTTP endpoint cannot be bound; unreachable servers are waited for.
pub async fn run_controller_with(
    config: DaemonConfig,
    server: ServerAddress,
    registry_url: &str,
    artifacts: Option<ArtifactStore>,
    stop: CancellationToken,
) -> Result<(), DaemonError> {
    let containerd = containerd_client(&config)?;
    let puller = ImagePuller::new(registry_url)
        .and_then(|p| {
            p.with_access(
                config.client.token.as_ref(),
                config.registry_tls.as_ref().map(|t| t.ca_pem.as_slice()),
            )
        })
        .map_err(DaemonError::Registry)?;
    let puller = Arc::new(puller);
    let mut registry = Registry::default();
    let metrics = EngineMetrics::register(&mut registry);
    let gc_metrics = GcMetrics::register(&mut registry);
    let cache = Cache::new();
    // Per-container CPU and memory from cgroups, read at each scrape (docs/sandbox.md).
    registry.register_collector(Box::new(SandboxMetrics::new(
        cache.clone(),
        &config.namespace,
    )));
    let http = match config.http {
        Some(addr) => Some(spawn_http(addr, registry, cache.clone(), stop.clone()).await?),
        None => None,
    };
    let Some(client) = connect(&server, &config.fallback_servers, &config.client, &stop).await
    else {
        return Ok(());
    };
    tracing::info!(node = %config.node_id, dry_run = config.dry_run, %server, "controller starting");
    let tracker = Arc::new(WriteTracker::default());
    let stream = watch_stream(
        client.clone(),
        sandbox_filter(&config),
        StreamConfig::default(),
    );
    let reconciler = SandboxReconciler::new(
        cache.clone(),
        containerd.clone(),
        puller,
        Arc::new(client.clone()),
        tracker.clone(),
        sandbox_config(&config),
    );
    let reconciler = match &config.network {
        Some(network) => reconciler.with_network(SandboxNetworking::new(
            network.clone(),
            config.data_dir.clone(),
        )),
        None => reconciler,
    };
    let leftovers = reconciler.leftovers().await;
    let executor = if config.dry_run {
        Executor::dry_run()
    } else {
        Executor::real()
    };
    let controller_config = ControllerConfig {
        queue: QueueConfig {
            bucket: Some(BucketConfig {
                qps: config.qps,
                burst: config.burst,
            }),
            ..QueueConfig::default()
        },
        runner: RunnerConfig {
            workers: config.workers,
            timeout: None,
        },
        resync: Some(config.resync),
        executor: executor.clone(),
        metrics: Some(metrics.clone()),
        tracker,
    };
    let gc_shared = GcShared {
        executor,
        engine: Some(metrics),
        gc: gc_metrics,
        board: LastPassBoard::default(),
        file: LastPassFile::new(last_pass_path(&config.data_dir), &config.node_id),
    };
    let controller = Controller::new(reconciler, controller_config).watch(cache.clone(), stream);
    let events = spawn_exit_watcher(
        containerd.clone(),
        cache.clone(),
        controller.trigger(),
        stop.clone(),
    );
    spawn_initial_sweep(containerd.clone(), cache, controller.trigger(), leftovers);
    let shutdown = Shutdown::new();
    let gc_runs: Vec<_> = gc_controllers(
        &config,
        &containerd,
        &client,
        artifacts,
        &gc_shared,
        &shutdown,
    )
    .into_iter()
    .map(tokio::spawn)
    .collect();
    let requested = {
        let shutdown = shutdown.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            tracing::info!("controller shutting down");
            shutdown.request();
        })
    };
    controller.run(shutdown).await;
    requested.abort();
    for run in gc_runs {
        if let Err(e) = run.await {
            tracing::warn!(error = %e, "a GC controller task ended badly");
        }
    }
    if let Err(e) = events.await {
        tracing::warn!(error = %e, "containerd event task ended badly");
    }
    if let Some(http) = http {
        match http.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP endpoint failed"),
            Err(e) => tracing::warn!(error = %e, "HTTP endpoint task ended badly"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("controller stopped");
    Ok(())
}

type HttpTask = tokio::task::JoinHandle<Result<(), crate::http::HttpError>>;

/// Binds the HTTP endpoint now (so a bad address fails the start) and serves it until `stop`.
async fn spawn_http(
    addr: SocketAddr,
    registry: Registry,
    cache: Cache,
    stop: CancellationToken,
) -> Result<HttpTask, DaemonError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Http(crate::http::HttpError::Bind { addr, source }))?;
    tracing::info!(%addr, "HTTP endpoint listening");
    let ready = move || cache.is_ready();
    Ok(tokio::spawn(crate::http::serve_http_on(
        listener,
        Arc::new(registry),
        ready,
        stop.cancelled_owned(),
    )))
}

/// Runs `converge controller` until `shutdown` resolves.
pub async fn run(
    args: ControllerArgs,
    server: ServerAddress,
    client: converge_watch::ClientOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let mut config = args.flags.validate()?;
    config.registry_tls = client.tls.clone();
    config.client = client;
    config.fallback_servers = args.fallback_servers;
    let stop = CancellationToken::new();
    let trip = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trip.cancel();
    });
    run_controller(config, server, &args.registry_url, stop).await
}
