//! `converge describe ID`: one entity explained for people; `converge describe node`: this node's last garbage-collection passes.
//!
//! This module parses the arguments and dispatches; [`entity`] lays out every kind's
//! description, [`sandbox`] and [`service`] render the kind-specific status sections, and
//! [`node`] renders the node's GC record.

mod entity;
mod node;
mod sandbox;
mod service;

use chrono::Utc;
use converge_reconcilers::containerd::DEFAULT_NAMESPACE;
use converge_watch::{EntityId, Kind};
use serde_json::Value;

use super::render::{NONE, RenderError, to_yaml};
use super::table::Table;
use super::{ClientContext, CommandError, call};

pub use entity::{describe, describe_sandbox, describe_with_events};
pub use node::describe_node_record;

/// Arguments of `converge describe`.
#[derive(Debug, Clone, clap::Args)]
pub struct DescribeArgs {
    /// The entity to describe, such as `sandbox/web`, or `node` for this node's last
    /// garbage-collection passes (read from `<data-dir>/gc-last-pass.json`).
    pub id: String,
    /// converge's data directory on this node: a sandbox's recent lifecycle events are read
    /// from `<data-dir>/logs/<sandbox>` when it exists here.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/converge")]
    pub data_dir: std::path::PathBuf,
    /// The containerd namespace the daemon on this node uses: a sandbox's CPU and memory
    /// are read from its containers' cgroups (`/converge/<namespace>/<container>`).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// The `describe` argument that names this node rather than an entity.
pub const NODE: &str = "node";

/// Runs `describe`: prints the entity's id, kind, revision, times, spec, status and events.
/// Fails with `<id> not found` when it does not exist. `describe node` prints the last GC
/// passes the daemon recorded in `<data-dir>/gc-last-pass.json` (JSON with `-o json`), and
/// fails with `... not found` when no daemon has written one there; no server is contacted.
pub async fn run(args: &DescribeArgs, ctx: &ClientContext) -> Result<(), CommandError> {
    if args.id == NODE {
        return node::run(args, ctx);
    }
    let id: EntityId = args
        .id
        .parse()
        .map_err(|e: converge_watch::IdError| CommandError::BadTarget(e.to_string()))?;
    let client = ctx.connect().await?;
    let entity = call(&format!("get {id}"), Some(&id.to_string()), client.get(&id))
        .await?
        .ok_or_else(|| CommandError::NotFound(id.to_string()))?;
    let (events, usage) = if entity.kind == Kind::Sandbox {
        sandbox::local_observations(args, &entity)
    } else {
        (Vec::new(), Vec::new())
    };
    ctx.print(&describe_sandbox(&entity, &events, &usage, Utc::now())?)
}

/// `text` with every line indented by `by` spaces, each ending in a newline.
fn indented(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// One `  Label:  value` line per `(label, key)` of `status`, labels padded to one column;
/// a value that is neither a non-empty string nor a number shows as `<none>`.
fn labeled_fields(status: &Value, fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (label, key) in fields {
        let text = match &status[*key] {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => NONE.to_string(),
        };
        out.push_str(&format!("  {:<19}{text}\n", format!("{label}:")));
    }
    out
}

/// The rows of `list` as a table indented by four spaces, or `    <none>` when `list` is
/// missing or empty.
fn table_or_none(
    list: Option<&Vec<Value>>,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> String {
    match list {
        Some(list) if !list.is_empty() => {
            let mut t = Table::new(headers);
            for item in list {
                t.push(row(item));
            }
            indented(&t.render(), 4)
        }
        _ => format!("    {NONE}\n"),
    }
}

/// The fields of `status` whose keys are not in `known`, as YAML indented by two spaces;
/// empty when there are none. Fails only when YAML rendering fails.
fn other_fields(status: &Value, known: &[&str]) -> Result<String, RenderError> {
    let extra: serde_json::Map<String, Value> = status
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| !known.contains(&k.as_str())))
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if extra.is_empty() {
        return Ok(String::new());
    }
    Ok(indented(&to_yaml(&extra)?, 2))
}
