//! `converge reconcile --kind sandbox --dry-run`: one level-triggered pass over every
//! sandbox of this node against the real server and containerd, printing the plan.

use std::sync::Arc;

use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::engine::{Executor, Plan, WriteTracker, run_pass};
use converge_reconcilers::sandbox::SandboxReconciler;
use converge_watch::cache::Cache;
use converge_watch::{EntityClient, StreamEvent};

use super::DaemonError;
use super::controller::{
    DEFAULT_REGISTRY_URL, containerd_client, sandbox_config, sandbox_filter,
    sandboxes_in_containerd,
};
use super::flags::ControllerFlags;
use crate::cli::{ClientContext, OutputFormat};

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

/// The flags of `converge reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileArgs {
    /// Which reconciler's pass to run.
    #[arg(long, value_enum, default_value_t = ReconcileKind::Sandbox)]
    pub kind: ReconcileKind,
    /// Where the artifact registry serves `cluster.local:5000/...` images.
    #[arg(long, value_name = "URL", default_value = DEFAULT_REGISTRY_URL)]
    pub registry_url: String,
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

/// Runs one dry-run pass and prints its plan; returns [`EXIT_CONVERGED`] or
/// [`EXIT_CHANGES`]. Kinds other than sandbox fail with [`DaemonError::NotBuilt`], and
/// without `--dry-run` with [`DaemonError::NotDryRun`], before anything is contacted.
/// Reconciles that fail are reported on stderr; what they would have written is planned.
pub async fn run(args: &ReconcileArgs, ctx: &ClientContext) -> Result<u8, DaemonError> {
    if args.kind != ReconcileKind::Sandbox {
        let name = match args.kind {
            ReconcileKind::Orphans => "orphans",
            ReconcileKind::Images => "images",
            _ => "blobs",
        };
        return Err(DaemonError::NotBuilt(name.to_string()));
    }
    if !args.flags.dry_run {
        return Err(DaemonError::NotDryRun);
    }
    let config = args.flags.validate()?;
    let client_err = |source| DaemonError::Client {
        address: ctx.server.to_string(),
        source,
    };
    let options = ctx
        .client_options()
        .map_err(|e| client_err(converge_watch::ClientError::Invalid(e.to_string())))?;
    let client = EntityClient::connect_with(std::slice::from_ref(&ctx.server), &options)
        .await
        .map_err(client_err)?;
    let (entities, revision) = client
        .list(&sandbox_filter(&config))
        .await
        .map_err(client_err)?;
    let cache = Cache::new();
    cache.apply(&StreamEvent::Restarted { entities, revision });
    let containerd = containerd_client(&config)?;
    let mut keys = cache.ids();
    for id in sandboxes_in_containerd(&containerd).await? {
        if !keys.contains(&id) {
            keys.push(id);
        }
    }
    let puller = Arc::new(ImagePuller::new(&args.registry_url).map_err(DaemonError::Registry)?);
    let reconciler = SandboxReconciler::new(
        cache,
        containerd,
        puller,
        Arc::new(client),
        Arc::new(WriteTracker::default()),
        sandbox_config(&config),
    );
    let executor = Executor::dry_run();
    let report = run_pass(Arc::new(reconciler), keys, config.workers, executor.clone()).await;
    for (key, why) in &report.failed {
        eprintln!("warning: {key}: {why}");
    }
    let plan = executor.plan();
    ctx.print(&render_plan(&plan, ctx.output)?)
        .map_err(|e| DaemonError::Output(e.to_string()))?;
    Ok(if plan.is_empty() {
        EXIT_CONVERGED
    } else {
        EXIT_CHANGES
    })
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
