//! The description every kind shares: header, spec, status (kind-specific or YAML), usage and events.

use chrono::{DateTime, SecondsFormat, Utc};
use converge_reconcilers::logs::LifecycleEvent;
use converge_reconcilers::sandbox::metrics::ContainerUsage;
use converge_watch::{Entity, Kind};
use serde_json::Value;

use super::super::render::{NONE, RenderError, to_yaml};
use super::super::table::human_age;
use super::{indented, sandbox, service};

/// The human-readable description of `entity` as of `now`, with no events (the `Events`
/// section says `<none>`); see [`describe_with_events`]. Fails only when YAML rendering fails.
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
/// memory of each container in `usage` (`<none> on this node` when empty). Any kind may be
/// passed: only a sandbox gets the `Usage` section.
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
        out.push_str(&sandbox::usage_section(usage));
    }
    out.push_str(&sandbox::events_section(events));
    Ok(out)
}

/// The `Status:` body: `<none>` when empty, the kind's own layout for a sandbox or a
/// service, otherwise (artifacts and the rest) the status as YAML.
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
    if !status.is_object() {
        return Ok(indented(&to_yaml(status)?, 2));
    }
    match entity.kind {
        Kind::Service => service::status_section(status),
        Kind::Sandbox => sandbox::status_section(status),
        Kind::Artifact => Ok(indented(&to_yaml(status)?, 2)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
