//! `converge reconcile [--kind sandbox|orphans|images|blobs] --dry-run`: one pass of each
//! asked reconciler against the real server, containerd and artifact store, printing the plan.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::blobs::{BlobGcDeps, blob_pass};
use converge_reconcilers::containerd::ContainerdClient;
use converge_reconcilers::engine::{Executor, Plan, WriteTracker, run_pass};
use converge_reconcilers::gc_report::{EntitySource, GcPassReport};
use converge_reconcilers::images::{ImageGcDeps, StatvfsDisk, image_pass};
use converge_reconcilers::sandbox::{SandboxNetworking, SandboxReconciler};
use converge_watch::cache::Cache;
use converge_watch::{EntityClient, StreamEvent};
use serde::Serialize;

use super::DaemonError;
use super::controller::{
    DEFAULT_REGISTRY_URL, containerd_client, sandbox_config, sandbox_filter,
    sandboxes_in_containerd,
};
use super::flags::{ControllerFlags, DaemonConfig};
use super::gc::{blob_config, image_config, orphan_collector};
use crate::cli::{ClientContext, OutputFormat};
use crate::registry::ArtifactStore;

/// Exit status when the plan is empty.
pub const EXIT_CONVERGED: u8 = 0;
/// Exit status when the plan has changes.
pub const EXIT_CHANGES: u8 = 2;

/// Which reconciler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReconcileKind {
    /// Sandboxes onto containerd.
    Sandbox,
    /// Containers nobody owns.
    Orphans,
    /// Unused images.
    Images,
    /// Unreferenced registry blobs.
    Blobs,
}

impl ReconcileKind {
    /// Lowercase name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileKind::Sandbox => "sandbox",
            ReconcileKind::Orphans => "orphans",
            ReconcileKind::Images => "images",
            ReconcileKind::Blobs => "blobs",
        }
    }
}

/// The flags of `converge reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileArgs {
    /// Which reconciler's pass to run (default: every one that applies on this node;
    /// blobs only where the artifact store exists).
    #[arg(long, value_enum)]
    pub kind: Option<ReconcileKind>,
    /// Where the artifact registry serves `cluster.local:5000/...` images.
    #[arg(long, value_name = "URL", default_value = DEFAULT_REGISTRY_URL)]
    pub registry_url: String,
    /// The registry's artifact store, for `--kind blobs` (default: <data-dir>/artifacts).
    #[arg(long, value_name = "DIR")]
    pub artifact_dir: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ControllerFlags,
}

/// The plan in the chosen format: a table, or JSON (YAML for `-o yaml`).
pub fn render_plan(plan: &Plan, format: OutputFormat) -> Result<String, DaemonError> {
    match format {
        OutputFormat::Table => Ok(plan.to_table()),
        OutputFormat::Json => plan
            .to_json()
            .map(|s| s + "\n")
            .map_err(|e| DaemonError::Output(e.to_string())),
        OutputFormat::Yaml => {
            serde_yaml::to_string(plan).map_err(|e| DaemonError::Output(e.to_string()))
        }
    }
}

/// What one kind's dry-run pass found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PassOutcome {
    /// The sandbox reconciler's plan.
    Sandbox(Plan),
    /// A GC pass's report: plan with bytes, what is kept and why, problems.
    Gc(Box<GcPassReport>),
}

impl PassOutcome {
    /// True when the pass would change nothing.
    pub fn is_empty(&self) -> bool {
        match self {
            PassOutcome::Sandbox(plan) => plan.is_empty(),
            PassOutcome::Gc(report) => report.plan.is_empty(),
        }
    }

    /// As a table: the plan, then (for GC) the kept list and the problems.
    pub fn to_table(&self) -> String {
        match self {
            PassOutcome::Sandbox(plan) => plan.to_table(),
            PassOutcome::Gc(report) => gc_report_table(report),
        }
    }
}

/// A GC report as text: the plan (`VERB TARGET BYTES REASON`, or `no changes`), then a
/// `KEPT` table and a `problems:` list when they are not empty.
pub fn gc_report_table(report: &GcPassReport) -> String {
    let mut out = report.plan.to_table();
    if !report.kept.is_empty() {
        let width = report
            .kept
            .iter()
            .map(|k| k.target.len())
            .max()
            .unwrap_or(0)
            .max(4);
        out.push_str(&format!("\n{:<width$}  WHY\n", "KEPT"));
        for k in &report.kept {
            out.push_str(&format!("{:<width$}  {}\n", k.target, k.reason));
        }
    }
    if !report.problems.is_empty() {
        out.push_str("\nproblems:\n");
        for p in &report.problems {
            out.push_str(&format!("  {p}\n"));
        }
    }
    out
}

/// The outcomes of one or more kinds in the chosen format. One kind prints as it is (a
/// sandbox plan as a plan, a GC pass as its report); several print as `== kind ==`
/// sections in a table, or one object keyed by kind in JSON/YAML.
pub fn render_outcomes(
    outcomes: &[(ReconcileKind, PassOutcome)],
    format: OutputFormat,
) -> Result<String, DaemonError> {
    let out = |e: &dyn std::fmt::Display| DaemonError::Output(e.to_string());
    if let [(_, only)] = outcomes {
        return match (only, format) {
            (PassOutcome::Sandbox(plan), _) => render_plan(plan, format),
            (gc, OutputFormat::Table) => Ok(gc.to_table()),
            (gc, OutputFormat::Json) => serde_json::to_string_pretty(gc)
                .map(|s| s + "\n")
                .map_err(|e| out(&e)),
            (gc, OutputFormat::Yaml) => serde_yaml::to_string(gc).map_err(|e| out(&e)),
        };
    }
    match format {
        OutputFormat::Table => Ok(outcomes
            .iter()
            .map(|(kind, o)| format!("== {} ==\n{}", kind.as_str(), o.to_table()))
            .collect::<Vec<_>>()
            .join("\n")),
        OutputFormat::Json | OutputFormat::Yaml => {
            let map: serde_json::Map<String, serde_json::Value> = outcomes
                .iter()
                .map(|(kind, o)| serde_json::to_value(o).map(|v| (kind.as_str().to_string(), v)))
                .collect::<Result<_, _>>()
                .map_err(|e| out(&e))?;
            let value = serde_json::Value::Object(map);
            if format == OutputFormat::Json {
                serde_json::to_string_pretty(&value)
                    .map(|s| s + "\n")
                    .map_err(|e| out(&e))
            } else {
                serde_yaml::to_string(&value).map_err(|e| out(&e))
            }
        }
    }
}

/// True when `dir` holds an artifact store (its `blobs/sha256` directory exists).
fn is_artifact_store(dir: &Path) -> bool {
    dir.join("blobs/sha256").is_dir()
}

/// Runs one dry-run pass of each asked kind (or, without `--kind`, of sandbox, orphans,
/// images, and blobs when the artifact store exists) with the real server, containerd and
/// store and the dry-run executor, and prints the outcome; returns [`EXIT_CONVERGED`] when
/// every plan is empty, else [`EXIT_CHANGES`]. Without `--dry-run` it fails with
/// [`DaemonError::NotDryRun`] before anything is contacted; `--kind blobs` without an
/// artifact store fails with [`DaemonError::NoArtifactStore`]. A GC pass that cannot run
/// at all fails the command; sandbox reconciles that fail are reported on stderr. The
/// orphan pass includes the daemon's network sweep unless `--host-network` is given.
pub async fn run(args: &ReconcileArgs, ctx: &ClientContext) -> Result<u8, DaemonError> {
    if !args.flags.dry_run {
        return Err(DaemonError::NotDryRun);
    }
    let config = args.flags.validate()?;
    let artifact_dir = args
        .artifact_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("artifacts"));
    let kinds: Vec<ReconcileKind> = match args.kind {
        Some(ReconcileKind::Blobs) if !is_artifact_store(&artifact_dir) => {
            return Err(DaemonError::NoArtifactStore(artifact_dir));
        }
        Some(kind) => vec![kind],
        None => {
            let mut all = vec![
                ReconcileKind::Sandbox,
                ReconcileKind::Orphans,
                ReconcileKind::Images,
            ];
            if is_artifact_store(&artifact_dir) {
                all.push(ReconcileKind::Blobs);
            }
            all
        }
    };
    let client_err = |source| DaemonError::Client {
        address: ctx.server.to_string(),
        source,
    };
    let options = ctx
        .client_options()
        .map_err(|e| client_err(converge_watch::ClientError::Invalid(e.to_string())))?;
    let client = EntityClient::connect_with(&ctx.addresses(), &options)
        .await
        .map_err(client_err)?;
    let containerd = containerd_client(&config)?;
    let entities: Arc<dyn EntitySource> = Arc::new(client.clone());
    let mut outcomes = Vec::new();
    for kind in kinds {
        let executor = Executor::dry_run();
        let outcome = match kind {
            ReconcileKind::Sandbox => {
                PassOutcome::Sandbox(sandbox_pass(args, &config, &client, &containerd, ctx).await?)
            }
            ReconcileKind::Orphans => {
                // The daemon's collector: with networking on (not `--host-network`) it
                // also sweeps leaked netns/veths/IPs under `--bridge`/`--subnet` and the
                // data dir. A fresh collector starts every grace clock now, so containers
                // are only listed as kept; networks have no grace and are planned.
                let report = orphan_collector(&config, &containerd, entities.clone())
                    .pass(&executor)
                    .await
                    .map_err(|e| DaemonError::gc_pass(kind.as_str(), e))?;
                PassOutcome::Gc(Box::new(report))
            }
            ReconcileKind::Images => {
                let deps = ImageGcDeps {
                    client: containerd.clone(),
                    entities: entities.clone(),
                    disk: Arc::new(StatvfsDisk::new(config.containerd_root.clone())),
                    config: image_config(&config),
                };
                let report = image_pass(&deps, &executor)
                    .await
                    .map_err(|e| DaemonError::gc_pass(kind.as_str(), e))?;
                PassOutcome::Gc(Box::new(report))
            }
            ReconcileKind::Blobs => {
                let store = ArtifactStore::open(&artifact_dir)
                    .await
                    .map_err(DaemonError::ArtifactStore)?;
                let deps = BlobGcDeps {
                    store: Arc::new(store),
                    entities: entities.clone(),
                    in_use: Some(Arc::new(containerd.clone())),
                    config: blob_config(&config),
                };
                let report = blob_pass(&deps, &executor)
                    .await
                    .map_err(|e| DaemonError::gc_pass(kind.as_str(), e))?;
                PassOutcome::Gc(Box::new(report))
            }
        };
        outcomes.push((kind, outcome));
    }
    ctx.print(&render_outcomes(&outcomes, ctx.output)?)
        .map_err(|e| DaemonError::Output(e.to_string()))?;
    Ok(if outcomes.iter().all(|(_, o)| o.is_empty()) {
        EXIT_CONVERGED
    } else {
        EXIT_CHANGES
    })
}

/// One dry-run pass of the sandbox reconciler over every sandbox of this node and every
/// sandbox still owning containers; returns its plan.
async fn sandbox_pass(
    args: &ReconcileArgs,
    config: &DaemonConfig,
    client: &EntityClient,
    containerd: &ContainerdClient,
    ctx: &ClientContext,
) -> Result<Plan, DaemonError> {
    let client_err = |source| DaemonError::Client {
        address: ctx.server.to_string(),
        source,
    };
    let (entities, revision) = client
        .list(&sandbox_filter(config))
        .await
        .map_err(client_err)?;
    let cache = Cache::new();
    cache.apply(&StreamEvent::Restarted { entities, revision });
    let mut keys = cache.ids();
    for id in sandboxes_in_containerd(containerd).await? {
        if !keys.contains(&id) {
            keys.push(id);
        }
    }
    let puller = Arc::new(ImagePuller::new(&args.registry_url).map_err(DaemonError::Registry)?);
    let reconciler = SandboxReconciler::new(
        cache,
        containerd.clone(),
        puller,
        Arc::new(client.clone()),
        Arc::new(WriteTracker::default()),
        sandbox_config(config),
    );
    // Networking as the daemon has it, so a sandbox's missing network is planned too.
    let reconciler = match &config.network {
        Some(network) => reconciler.with_network(SandboxNetworking::new(
            network.clone(),
            config.data_dir.clone(),
        )),
        None => reconciler,
    };
    let executor = Executor::dry_run();
    let report = run_pass(Arc::new(reconciler), keys, config.workers, executor.clone()).await;
    for (key, why) in &report.failed {
        eprintln!("warning: {key}: {why}");
    }
    Ok(executor.plan())
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_reconcilers::engine::{PlannedAction, Verb};

    #[test]
    fn plans_render_as_table_json_and_yaml() {
        let mut plan = Plan::new();
        plan.push(PlannedAction::new(
            Verb::Create,
            "container/sandbox.web.app",
            "missing",
        ));
        let table = render_plan(&plan, OutputFormat::Table).expect("table");
        assert!(table.starts_with("VERB"), "{table}");
        let json: serde_json::Value =
            serde_json::from_str(&render_plan(&plan, OutputFormat::Json).expect("json"))
                .expect("parse");
        assert_eq!(json[0]["verb"], "create");
        let yaml = render_plan(&plan, OutputFormat::Yaml).expect("yaml");
        assert!(yaml.contains("verb: create"), "{yaml}");
    }
}
