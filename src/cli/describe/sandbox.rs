//! A sandbox's description parts: its `Status:` section, the node-local `Usage:` and `Events:` sections.

use chrono::SecondsFormat;
use converge_reconcilers::containerd::cgroups::CgroupLayout;
use converge_reconcilers::logs::{LifecycleEvent, LifecycleLog};
use converge_reconcilers::sandbox::metrics::{ContainerUsage, sandbox_usage};
use converge_watch::Entity;
use serde_json::Value;

use super::super::render::{NONE, RenderError};
use super::super::table::Table;
use super::{DescribeArgs, indented, labeled_fields, other_fields, table_or_none};

/// Lifecycle events shown by `describe`.
const RECENT_EVENTS: usize = 10;

/// Status keys this section lays out itself; the rest are printed as YAML after it.
const KNOWN: [&str; 5] = ["phase", "ip", "message", "observed_revision", "containers"];

/// What this node knows about the sandbox `entity` beyond the server: its recent lifecycle
/// events (from `<data-dir>/logs/<sandbox>`) and its containers' CPU and memory (from their
/// cgroups). Never fails: an unreadable log is logged and shows as no events, a container
/// without a live cgroup here has no usage row.
pub(super) fn local_observations(
    args: &DescribeArgs,
    entity: &Entity,
) -> (Vec<LifecycleEvent>, Vec<ContainerUsage>) {
    let dir = args.data_dir.join("logs").join(entity.id.name());
    let events = LifecycleLog::recent_events(&dir, RECENT_EVENTS).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the sandbox's lifecycle events");
        Vec::new()
    });
    let names = container_names(entity);
    let usage = sandbox_usage(
        CgroupLayout::host(),
        &args.namespace,
        &entity.id,
        names.iter().map(String::as_str),
    );
    (events, usage)
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

/// A sandbox's status (an object): phase, IP, message, observed revision, one row per
/// container, then any other fields as YAML. Fails only when YAML rendering fails.
pub(super) fn status_section(status: &Value) -> Result<String, RenderError> {
    let mut out = labeled_fields(
        status,
        &[
            ("Phase", "phase"),
            ("IP", "ip"),
            ("Message", "message"),
            ("Observed revision", "observed_revision"),
        ],
    );
    out.push_str("  Containers:\n");
    out.push_str(&table_or_none(
        status["containers"].as_array(),
        &["name", "state", "exit code", "restarts"],
        container_row,
    ));
    out.push_str(&other_fields(status, &KNOWN)?);
    Ok(out)
}

/// One container's cells: name, state (with the reason, such as `OOMKilled`, when there is
/// one), exit code and restarts; `-` for a field that is neither a string nor a number.
fn container_row(c: &Value) -> Vec<String> {
    let field = |k: &str| match &c[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "-".to_string(),
    };
    let state = match c["reason"].as_str() {
        Some(reason) => format!("{} ({reason})", field("state")),
        None => field("state"),
    };
    vec![
        field("name"),
        state,
        field("exit_code"),
        field("restart_count"),
    ]
}

/// The `Usage:` section: one row per container with a live cgroup on this node.
pub(super) fn usage_section(usage: &[ContainerUsage]) -> String {
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

/// The `Events:` section: one line per event (oldest first), `<none>` when there are none.
pub(super) fn events_section(events: &[LifecycleEvent]) -> String {
    let mut out = "Events:\n".to_string();
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

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};
    use serde_json::json;

    use super::super::{describe, describe_sandbox};
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
}
