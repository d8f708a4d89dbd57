//! `converge describe ID`: one entity explained for people; `converge describe node`: this node's last garbage-collection passes.

use chrono::{DateTime, SecondsFormat, Utc};
use converge_reconcilers::containerd::DEFAULT_NAMESPACE;
use converge_reconcilers::containerd::cgroups::CgroupLayout;
use converge_reconcilers::logs::{LifecycleEvent, LifecycleLog};
use converge_reconcilers::sandbox::metrics::{ContainerUsage, sandbox_usage};
use converge_watch::{Entity, EntityId, Kind};
use serde_json::Value;

use super::render::{NONE, RenderError, to_json, to_yaml};
use super::table::{Table, human_age};
use super::{ClientContext, CommandError, call};
use crate::daemon::gc::{NodeGcRecord, last_pass_path, read_last_passes};

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

/// Lifecycle events shown by `describe`.
const RECENT_EVENTS: usize = 10;

/// The `describe` argument that names this node rather than an entity.
pub const NODE: &str = "node";

/// Runs `describe`: prints the entity's id, kind, revision, times, spec, status and events.
/// Fails with `<id> not found` when it does not exist. `describe node` prints the last GC
/// passes the daemon recorded in `<data-dir>/gc-last-pass.json` (JSON with `-o json`), and
/// fails with `... not found` when no daemon has written one there; no server is contacted.
pub async fn run(args: &DescribeArgs, ctx: &ClientContext) -> Result<(), CommandError> {
    if args.id == NODE {
        return describe_node(args, ctx);
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
        let dir = args.data_dir.join("logs").join(id.name());
        let events = LifecycleLog::recent_events(&dir, RECENT_EVENTS).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the sandbox's lifecycle events");
            Vec::new()
        });
        let names = container_names(&entity);
        let usage = sandbox_usage(
            CgroupLayout::host(),
            &args.namespace,
            &id,
            names.iter().map(String::as_str),
        );
        (events, usage)
    } else {
        (Vec::new(), Vec::new())
    };
    ctx.print(&describe_sandbox(&entity, &events, &usage, Utc::now())?)
}

/// The container names a sandbox's spec and status mention, spec order first.
fn container_names(entity: &Entity) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for list in [&entity.spec["containers"], &entity.status["containers"]] {
        for c in list.as_array().into_iter().flatten() {
            if let Some(name) = c["name"].as_str()
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// The human-readable description of `entity` as of `now`, with no events (the `Events`
/// section says `<none>`); see [`describe_with_events`].
pub fn describe(entity: &Entity, now: DateTime<Utc>) -> Result<String, RenderError> {
    describe_with_events(entity, &[], now)
}

/// [`describe`] with `events` (oldest first) in the `Events` section, `<none>` when empty.
pub fn describe_with_events(
    entity: &Entity,
    events: &[LifecycleEvent],
    now: DateTime<Utc>,
) -> Result<String, RenderError> {
    describe_sandbox(entity, events, &[], now)
}

/// [`describe_with_events`] plus, for a sandbox, a `Usage` section with the CPU and
/// memory of each container in `usage` (`<none> on this node` when empty).
pub fn describe_sandbox(
    entity: &Entity,
    events: &[LifecycleEvent],
    usage: &[ContainerUsage],
    now: DateTime<Utc>,
) -> Result<String, RenderError> {
    let when = |t: DateTime<Utc>| {
        if t.timestamp_millis() == 0 {
            "<unknown>".to_string()
        } else {
            format!(
                "{} ({} ago)",
                t.to_rfc3339_opts(SecondsFormat::Secs, true),
                human_age(t, now)
            )
        }
    };
    let mut out = String::new();
    for (label, value) in [
        ("ID", entity.id.to_string()),
        ("Kind", entity.kind.to_string()),
        ("Revision", entity.revision.to_string()),
        ("Created", when(entity.created_at)),
        ("Updated", when(entity.updated_at)),
    ] {
        out.push_str(&format!("{:<10}{value}\n", format!("{label}:")));
    }
    out.push_str("Spec:\n");
    out.push_str(&indented(&to_yaml(&entity.spec)?, 2));
    out.push_str("Status:\n");
    out.push_str(&status_section(entity)?);
    if entity.kind == Kind::Sandbox {
        out.push_str(&usage_section(usage));
    }
    out.push_str("Events:\n");
    if events.is_empty() {
        out.push_str(&format!("  {NONE}\n"));
    }
    for e in events {
        out.push_str(&format!(
            "  {}  {}  {}\n",
            e.time.to_rfc3339_opts(SecondsFormat::Secs, true),
            e.subject,
            e.message
        ));
    }
    Ok(out)
}

fn describe_node(args: &DescribeArgs, ctx: &ClientContext) -> Result<(), CommandError> {
    let path = last_pass_path(&args.data_dir);
    let record = read_last_passes(&path)
        .map_err(|e| CommandError::BadTarget(error_chain(&e)))?
        .ok_or_else(|| {
            CommandError::NotFound(format!(
                "a GC last-pass record at {} (has a daemon with --data-dir {} finished a pass?)",
                path.display(),
                args.data_dir.display()
            ))
        })?;
    let text = match ctx.output {
        super::OutputFormat::Table => describe_node_record(&record, Utc::now()),
        super::OutputFormat::Json => to_json(&record)?,
        super::OutputFormat::Yaml => to_yaml(&record)?,
    };
    ctx.print(&text)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// The human-readable form of a node's GC record as of `now`: the node, when the record
/// was written, and one row per GC kind with its last pass (`<none>` when none ran).
pub fn describe_node_record(record: &NodeGcRecord, now: DateTime<Utc>) -> String {
    let mut out = format!("{:<10}{}\n", "Node:", record.node);
    out.push_str(&format!(
        "{:<10}{} ({} ago)\n",
        "Updated:",
        record.updated.to_rfc3339_opts(SecondsFormat::Secs, true),
        human_age(record.updated, now)
    ));
    out.push_str("Garbage collection (last pass):\n");
    if record.passes.is_empty() {
        out.push_str(&format!("  {NONE}\n"));
        return out;
    }
    let mut t = Table::new(&[
        "kind", "finished", "took", "deleted", "bytes", "in use", "errors", "mode",
    ]);
    for p in &record.passes {
        let took = (p.finished - p.started).num_milliseconds();
        t.push(vec![
            p.kind.to_string(),
            format!("{} ago", human_age(p.finished, now)),
            format!("{}.{:03}s", took / 1000, took % 1000),
            p.deleted.to_string(),
            p.bytes_freed.to_string(),
            p.kept_in_use.to_string(),
            p.errors.to_string(),
            if p.dry_run { "dry-run" } else { "real" }.to_string(),
        ]);
    }
    out.push_str(&indented(&t.render(), 2));
    out
}

fn status_section(entity: &Entity) -> Result<String, RenderError> {
    let status = &entity.status;
    let empty = match status {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    if empty {
        return Ok(format!("  {NONE}\n"));
    }
    if entity.kind == Kind::Service && status.is_object() {
        return service_status_section(status);
    }
    if entity.kind != Kind::Sandbox || !status.is_object() {
        return Ok(indented(&to_yaml(status)?, 2));
    }
    let mut out = String::new();
    let known = ["phase", "ip", "message", "observed_revision", "containers"];
    for (label, key) in [
        ("Phase", "phase"),
        ("IP", "ip"),
        ("Message", "message"),
        ("Observed revision", "observed_revision"),
    ] {
        let text = match &status[key] {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => NONE.to_string(),
        };
        out.push_str(&format!("  {:<19}{text}\n", format!("{label}:")));
    }
    out.push_str("  Containers:\n");
    match status["containers"].as_array() {
        Some(list) if !list.is_empty() => {
            let mut t = Table::new(&["name", "state", "exit code", "restarts"]);
            for c in list {
                let field = |k: &str| match &c[k] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => "-".to_string(),
                };
                let state = match c["reason"].as_str() {
                    Some(reason) => format!("{} ({reason})", field("state")),
                    None => field("state"),
                };
                t.push(vec![
                    field("name"),
                    state,
                    field("exit_code"),
                    field("restart_count"),
                ]);
            }
            out.push_str(&indented(&t.render(), 4));
        }
        _ => out.push_str(&format!("    {NONE}\n")),
    }
    let extra: serde_json::Map<String, Value> = status
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| !known.contains(&k.as_str())))
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !extra.is_empty() {
        out.push_str(&indented(&to_yaml(&extra)?, 2));
    }
    Ok(out)
}

/// A service's status: message, observed revision, then one row per endpoint with the
/// sandbox behind it, then any other fields as YAML.
fn service_status_section(status: &Value) -> Result<String, RenderError> {
    let mut out = String::new();
    for (label, key) in [
        ("Message", "message"),
        ("Observed revision", "observed_revision"),
    ] {
        let text = match &status[key] {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => NONE.to_string(),
        };
        out.push_str(&format!("  {:<19}{text}\n", format!("{label}:")));
    }
    out.push_str("  Endpoints:\n");
    match status["endpoints"].as_array() {
        Some(list) if !list.is_empty() => {
            let mut t = Table::new(&["address", "node", "sandbox"]);
            for e in list {
                let field = |k: &str| match &e[k] {
                    Value::String(s) if !s.is_empty() => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => "-".to_string(),
                };
                let address = match e {
                    Value::String(s) => s.clone(),
                    _ => field("address"),
                };
                t.push(vec![address, field("node"), field("sandbox")]);
            }
            out.push_str(&indented(&t.render(), 4));
        }
        _ => out.push_str(&format!("    {NONE}\n")),
    }
    let known = ["message", "observed_revision", "endpoints"];
    let extra: serde_json::Map<String, Value> = status
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| !known.contains(&k.as_str())))
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !extra.is_empty() {
        out.push_str(&indented(&to_yaml(&extra)?, 2));
    }
    Ok(out)
}

/// The `Usage:` section: one row per container with a live cgroup on this node.
fn usage_section(usage: &[ContainerUsage]) -> String {
    let mut out = "Usage:\n".to_string();
    if usage.is_empty() {
        out.push_str(&format!("  {NONE} on this node\n"));
        return out;
    }
    let mut t = Table::new(&["container", "cpu", "memory", "peak", "limit"]);
    for u in usage {
        let opt = |b: Option<u64>| b.map_or_else(|| "-".to_string(), human_bytes);
        t.push(vec![
            u.container.clone(),
            format!("{:.2}s", u.usage.cpu_seconds),
            human_bytes(u.usage.memory_bytes),
            opt(u.usage.memory_peak_bytes),
            opt(u.usage.memory_limit_bytes),
        ]);
    }
    out.push_str(&indented(&t.render(), 2));
    out
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `64.0 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn indented(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_sandbox_description_has_every_section() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 29, 12, 0, 0)
            .single()
            .expect("time");
        let mut e = Entity::new(
            "sandbox/web".parse().expect("id"),
            json!({"containers": [{"name": "app", "image": "busybox"}]}),
        );
        e.revision = 12;
        e.created_at = now - Duration::seconds(180);
        e.updated_at = now - Duration::seconds(45);
        e.status = json!({"phase": "running", "ip": "10.88.0.5", "observed_revision": 12,
            "containers": [{"name": "app", "state": "running", "restart_count": 0}],
            "netns": "/run/netns/x"});
        let text = describe(&e, now).expect("describe");
        for want in [
            "ID:       sandbox/web\n",
            "Kind:     sandbox\n",
            "Revision: 12\n",
            "Created:  2026-11-29T11:57:00Z (3m ago)\n",
            "Updated:  2026-11-29T11:59:15Z (45s ago)\n",
            "Spec:\n  containers:\n  - image: busybox\n    name: app\n",
            "  Phase:             running\n",
            "  IP:                10.88.0.5\n",
            "  Message:           <none>\n",
            "    NAME   STATE     EXIT CODE   RESTARTS\n    app    running   -           0\n",
            "  netns: /run/netns/x\n",
            "Events:\n  <none>\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn a_node_description_lists_the_last_pass_of_each_kind() {
        use converge_reconcilers::gc_report::{GcKind, GcPassReport};
        let now = Utc
            .with_ymd_and_hms(2026, 11, 29, 12, 0, 0)
            .single()
            .expect("time");
        let mut pass = GcPassReport::start(GcKind::Orphans, false).summary;
        pass.started = now - Duration::seconds(62);
        pass.finished = now - Duration::seconds(60);
        pass.deleted = 3;
        pass.bytes_freed = 4096;
        let record = NodeGcRecord {
            node: "n1".into(),
            updated: now - Duration::seconds(60),
            passes: vec![pass],
        };
        let text = describe_node_record(&record, now);
        assert!(text.starts_with("Node:     n1\n"), "{text}");
        assert!(text.contains("Garbage collection (last pass):\n"), "{text}");
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("orphans"))
            .expect("orphans row");
        for want in ["60s ago", "2.000s", "3", "4096", "real"] {
            assert!(row.contains(want), "{want:?} missing in {row:?}");
        }
        let empty = NodeGcRecord {
            passes: Vec::new(),
            ..record
        };
        assert!(describe_node_record(&empty, now).ends_with("  <none>\n"));
    }

    #[test]
    fn a_service_description_lists_its_endpoints_with_their_sandboxes() {
        let mut e = Entity::new(
            "service/web".parse().expect("id"),
            json!({"selector": {"app": "web"}, "port": 80, "target_port": 8080}),
        );
        e.status = json!({"message": "2 endpoints", "observed_revision": 7,
            "observed_spec": "abc",
            "endpoints": [
                {"ip": "10.88.0.5", "port": 8080, "address": "10.88.0.5:8080",
                 "node": "node-a", "sandbox": "sandbox/web-1"},
                {"ip": "10.88.0.6", "port": 8080, "address": "10.88.0.6:8080",
                 "node": "node-b", "sandbox": "sandbox/web-2"}]});
        let text = describe(&e, Utc::now()).expect("describe");
        for want in [
            "  Message:           2 endpoints\n",
            "  Observed revision: 7\n",
            "  Endpoints:\n    ADDRESS          NODE     SANDBOX\n",
            "    10.88.0.5:8080   node-a   sandbox/web-1\n",
            "    10.88.0.6:8080   node-b   sandbox/web-2\n",
            "  observed_spec: abc\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        e.status = json!({"message": "no sandbox matches app=web", "endpoints": []});
        let text = describe(&e, Utc::now()).expect("describe");
        assert!(text.contains("  Endpoints:\n    <none>\n"), "{text}");
    }

    #[test]
    fn a_sandbox_description_shows_usage_per_container_and_an_oom_reason() {
        use converge_reconcilers::containerd::cgroups::CgroupUsage;
        let mut e = Entity::new(
            "sandbox/web".parse().expect("id"),
            json!({"containers": [{"name": "app", "image": "busybox"}]}),
        );
        e.status = json!({"phase": "pending", "containers": [{"name": "app",
            "state": "restarting", "exit_code": 137, "reason": "OOMKilled", "restart_count": 2}]});
        let usage = ContainerUsage {
            sandbox: e.id.clone(),
            container: "app".into(),
            usage: CgroupUsage {
                cpu_seconds: 1.234,
                memory_bytes: 3 * 1024 * 1024 / 2,
                memory_peak_bytes: Some(8 << 20),
                memory_limit_bytes: None,
                oom_kills: 1,
            },
        };
        let text = describe_sandbox(&e, &[], &[usage], Utc::now()).expect("describe");
        for want in [
            "    app    restarting (OOMKilled)   137         2\n",
            "Usage:\n  CONTAINER   CPU     MEMORY    PEAK      LIMIT\n",
            "  app         1.23s   1.5 MiB   8.0 MiB   -\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let elsewhere = describe(&e, Utc::now()).expect("describe");
        assert!(
            elsewhere.contains("Usage:\n  <none> on this node\n"),
            "{elsewhere}"
        );
        assert_eq!(human_bytes(512), "512 B");
    }

    #[test]
    fn an_entity_without_status_says_none() {
        let e = Entity::new("service/s".parse().expect("id"), json!({"port": 80}));
        let text = describe(&e, Utc::now()).expect("describe");
        assert!(
            text.contains("Status:\n  <none>\nEvents:\n  <none>\n"),
            "{text}"
        );
        assert!(text.contains("Created:  <unknown>\n"), "{text}");
    }
}
