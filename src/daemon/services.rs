//! The service controller beside the entity server: keeps each `service`'s
//! `status.endpoints` current from the sandboxes of every node (design in `docs/services.md`).

use std::sync::Arc;
use std::time::Duration;

use converge_reconcilers::engine::{
    Controller, ControllerConfig, EngineMetrics, Executor, RunnerConfig, Shutdown, StatusWriter,
    WriteTracker,
};
use converge_reconcilers::services::{SandboxEventMapper, ServiceReconciler};
use converge_watch::cache::Cache;
use converge_watch::client::{ClientOptions, EntityClient, ListFilter};
use converge_watch::stream::{StreamConfig, watch_stream};
use converge_watch::{Kind, ServerAddress};
use tokio_util::sync::CancellationToken;

use super::flags::DaemonConfig;

/// Failed connection attempts (one per second) before a warning: the server of the same
/// process may simply not listen yet.
const CONNECT_QUIET_ATTEMPTS: u32 = 5;
/// After that, a still-unreachable server is logged once every this many attempts.
const CONNECT_WARN_EVERY: u32 = 60;

/// Settings of the service controller.
#[derive(Debug, Clone)]
pub struct ServiceControllerConfig {
    /// Level-triggered resync: every service is recomputed from scratch this often
    /// (default 1 min, jittered by ±10%).
    pub resync: Duration,
    /// Concurrent reconciles (default 2).
    pub workers: usize,
    /// Record the status writes in a plan instead of making them.
    pub dry_run: bool,
    /// The node reported for sandboxes that name none (`converge up`'s node id; empty
    /// beside a cluster's server, where sandboxes name their node).
    pub default_node: String,
    /// Where to record the engine metrics (`controller="service"`), if anywhere.
    pub metrics: Option<EngineMetrics>,
}

impl Default for ServiceControllerConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(60),
            workers: 2,
            dry_run: false,
            default_node: String::new(),
            metrics: None,
        }
    }
}

impl ServiceControllerConfig {
    /// The settings `converge up` uses: its resync, dry-run and node id.
    pub fn for_daemon(config: &DaemonConfig) -> Self {
        Self {
            resync: config.resync,
            dry_run: config.dry_run,
            default_node: config.node_id.clone(),
            ..Self::default()
        }
    }
}

/// Why the service controller could not run. It has no failure of its own yet (an
/// unreachable server is waited for, a failed status write retried); the type lets its
/// callers (leader election in `converge server`) handle future ones.
#[derive(Debug, thiserror::Error)]
pub enum ServiceControllerError {}

/// Runs the service controller over `client` until `cancel`, then stops gracefully
/// (in-flight reconciles finish). It watches every service and every sandbox (of all
/// nodes), reconciles each service keyed by its id when it changes, when a sandbox it
/// selects (before or after the change) or lists changes, and at each resync, and writes
/// `status.endpoints` with optimistic concurrency (only when it changes; recorded in a plan
/// instead in dry-run). A server that goes away is waited for by the watch streams; this
/// function itself does not fail once running (the `Result` is for wrappers such as
/// leader election).
pub async fn run_service_controller(
    client: EntityClient,
    config: ServiceControllerConfig,
    cancel: CancellationToken,
) -> Result<(), ServiceControllerError> {
    let services = Cache::new();
    let sandboxes = Cache::new();
    let tracker = Arc::new(WriteTracker::default());
    let executor = if config.dry_run {
        Executor::dry_run()
    } else {
        Executor::real()
    };
    let writer = StatusWriter::new(Arc::new(client.clone()), tracker.clone(), executor.clone());
    let reconciler = ServiceReconciler::new(
        services.clone(),
        sandboxes.clone(),
        writer,
        config.default_node.clone(),
    );
    let of_kind = |kind| ListFilter {
        kind: Some(kind),
        ..ListFilter::default()
    };
    let service_stream = watch_stream(
        client.clone(),
        of_kind(Kind::Service),
        StreamConfig::default(),
    );
    let sandbox_stream = watch_stream(client, of_kind(Kind::Sandbox), StreamConfig::default());
    let mapper = SandboxEventMapper::new(sandboxes, services.clone());
    let controller_config = ControllerConfig {
        runner: RunnerConfig {
            workers: config.workers.max(1),
            timeout: None,
        },
        resync: Some(config.resync),
        executor,
        metrics: config.metrics,
        tracker,
        ..ControllerConfig::default()
    };
    let controller = Controller::new(reconciler, controller_config)
        .watch(services, service_stream)
        .watches(sandbox_stream, move |event| mapper.map(event));
    let shutdown = Shutdown::new();
    let requested = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            shutdown.request();
        })
    };
    tracing::info!(
        dry_run = config.dry_run,
        resync = ?config.resync,
        "service controller starting"
    );
    controller.run(shutdown).await;
    requested.abort();
    tracing::info!("service controller stopped");
    Ok(())
}

/// Connects to the entity server at `address` (retrying every second until it answers
/// or `cancel`), then runs [`run_service_controller`]. Returns `Ok` at once when cancelled
/// before connecting.
pub async fn connect_and_run(
    address: ServerAddress,
    options: ClientOptions,
    config: ServiceControllerConfig,
    cancel: CancellationToken,
) -> Result<(), ServiceControllerError> {
    let mut attempts: u32 = 0;
    let client = loop {
        match EntityClient::connect_with(std::slice::from_ref(&address), &options).await {
            Ok(client) => break client,
            Err(e) => {
                if attempts >= CONNECT_QUIET_ATTEMPTS
                    && (attempts - CONNECT_QUIET_ATTEMPTS).is_multiple_of(CONNECT_WARN_EVERY)
                {
                    tracing::warn!(%address, error = %e, "service controller: entity server not reachable yet");
                } else {
                    tracing::debug!(%address, error = %e, "service controller: entity server not reachable yet");
                }
                attempts = attempts.wrapping_add(1);
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    run_service_controller(client, config, cancel).await
}
