//! Turning entities into what the CLI prints: per-kind tables, JSON, YAML and watch lines.

use chrono::{DateTime, Utc};
use converge_watch::{Entity, Kind};
use serde::Serialize;
use serde_json::Value;

use super::table::{Table, human_age};

/// Why an entity could not be encoded for output.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// JSON encoding failed.
    #[error("cannot encode the output as JSON")]
    Json(#[source] serde_json::Error),
    /// YAML encoding failed.
    #[error("cannot encode the output as YAML")]
    Yaml(#[source] serde_yaml::Error),
}

/// Placeholder for a missing value, as kubectl prints it.
pub const NONE: &str = "<none>";

/// Pretty JSON of any serializable value, ending in a newline.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, RenderError> {
    let mut text = serde_json::to_string_pretty(value).map_err(RenderError::Json)?;
    text.push('\n');
    Ok(text)
}

/// YAML of any serializable value, ending in a newline.
pub fn to_yaml<T: Serialize + ?Sized>(value: &T) -> Result<String, RenderError> {
    serde_yaml::to_string(value).map_err(RenderError::Yaml)
}

/// The table for entities of one kind (its own columns), or the mixed
/// `ID KIND REVISION AGE` table when `kind` is `None`.
pub fn entity_table(kind: Option<Kind>, entities: &[Entity], now: DateTime<Utc>) -> Table {
    let age = |e: &Entity| human_age(e.created_at, now);
    match kind {
        Some(Kind::Sandbox) => {
            let mut t = Table::new(&["id", "phase", "node", "ip", "containers", "restarts", "age"]);
            for e in entities {
                let (ready, restarts) = container_counts(e);
                t.push(vec![
                    e.id.to_string(),
                    text_or_none(&e.status["phase"]),
                    text_or_none(&e.spec["node"]),
                    text_or_none(&e.status["ip"]),
                    ready,
                    restarts,
                    age(e),
                ]);
            }
            t
        }
        Some(Kind::Artifact) => {
            let mut t = Table::new(&["id", "image", "state", "manifest", "age"]);
            for e in entities {
                t.push(vec![
                    e.id.to_string(),
                    text_or_none(&e.spec["image"]),
                    e.spec["state"].as_str().unwrap_or("active").to_string(),
                    short_digest(e.spec["manifest"].as_str().unwrap_or("")),
                    age(e),
                ]);
            }
            t
        }
        Some(Kind::Service) => {
            let mut t = Table::new(&["id", "selector", "port", "endpoints", "age"]);
            for e in entities {
                t.push(vec![
                    e.id.to_string(),
                    selector(&e.spec["selector"]),
                    service_port(&e.spec),
                    endpoints(&e.status["endpoints"]),
                    age(e),
                ]);
            }
            t
        }
        None => {
            let mut t = Table::new(&["id", "kind", "revision", "age"]);
            for e in entities {
                t.push(vec![
                    e.id.to_string(),
                    e.kind.to_string(),
                    e.revision.to_string(),
                    age(e),
                ]);
            }
            t
        }
    }
}

/// The short state a watch line shows: a sandbox's phase, an artifact's state, or `-`.
pub fn short_state(e: &Entity) -> String {
    let text = match e.kind {
        Kind::Sandbox => e.status["phase"].as_str(),
        Kind::Artifact => e.spec["state"].as_str().or(Some("active")),
        Kind::Service => None,
    };
    text.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// `sha256:` and the first 12 hex digits of a digest; other text unchanged; `<none>` if empty.
pub fn short_digest(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}", &hex[..12]),
        _ if digest.is_empty() => NONE.to_string(),
        _ => digest.to_string(),
    }
}

fn text_or_none(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => NONE.to_string(),
    }
}

/// `running/declared` containers and the sum of their restarts, from status and spec.
fn container_counts(e: &Entity) -> (String, String) {
    let declared = e.spec["containers"].as_array().map_or(0, Vec::len);
    let statuses = e.status["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let running = statuses
        .iter()
        .filter(|c| c["state"].as_str() == Some("running"))
        .count();
    let restarts: u64 = statuses
        .iter()
        .filter_map(|c| c["restart_count"].as_u64())
        .sum();
    (format!("{running}/{declared}"), restarts.to_string())
}

fn selector(v: &Value) -> String {
    match v.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => NONE.to_string(),
    }
}

fn service_port(spec: &Value) -> String {
    match (spec["port"].as_u64(), spec["target_port"].as_u64()) {
        (Some(p), Some(t)) if p != t => format!("{p}->{t}"),
        (Some(p), _) => p.to_string(),
        _ => NONE.to_string(),
    }
}

/// Up to three endpoints (each its `address`, or the text of a plain string entry), then
/// `+ N more...` like kubectl; a bare count is shown as is.
fn endpoints(v: &Value) -> String {
    const SHOWN: usize = 3;
    match v {
        Value::Array(list) if !list.is_empty() => {
            let names: Vec<String> = list
                .iter()
                .map(|x| {
                    x["address"]
                        .as_str()
                        .or_else(|| x.as_str())
                        .map_or_else(|| x.to_string(), str::to_string)
                })
                .collect();
            let mut text = names
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            if names.len() > SHOWN {
                text.push_str(&format!(" + {} more...", names.len() - SHOWN));
            }
            text
        }
        Value::Number(n) => n.to_string(),
        _ => NONE.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0)
            .single()
            .expect("time")
    }

    fn entity(id: &str, spec: Value, status: Value, age_secs: i64) -> Entity {
        let mut e = Entity::new(id.parse().expect("id"), spec);
        e.status = status;
        e.revision = 7;
        e.created_at = now() - Duration::seconds(age_secs);
        e
    }

    #[test]
    fn sandbox_rows_show_phase_node_ip_ready_containers_and_restarts() {
        let web = entity(
            "sandbox/web",
            json!({"node": "node-a", "containers": [{"name": "a"}, {"name": "b"}]}),
            json!({"phase": "running", "ip": "10.88.0.5", "containers": [
                {"name": "a", "state": "running", "restart_count": 2},
                {"name": "b", "state": "exited", "restart_count": 1}]}),
            45,
        );
        let fresh = entity(
            "sandbox/new",
            json!({"containers": [{"name": "a"}]}),
            json!({}),
            200,
        );
        let text = entity_table(Some(Kind::Sandbox), &[web, fresh], now()).render();
        assert_eq!(
            text,
            "ID            PHASE     NODE     IP          CONTAINERS   RESTARTS   AGE\n\
             sandbox/web   running   node-a   10.88.0.5   1/2          3          45s\n\
             sandbox/new   <none>    <none>   <none>      0/1          0          3m20s\n"
        );
    }

    #[test]
    fn artifact_rows_show_a_short_digest() {
        let digest = format!("sha256:{}", "0123456789ab".repeat(5) + "cdef");
        let a = entity(
            "artifact/demo",
            json!({"image": "cluster.local:5000/demo:v1", "manifest": digest}),
            json!({}),
            3 * 86_400,
        );
        let text = entity_table(Some(Kind::Artifact), &[a], now()).render();
        assert_eq!(
            text,
            "ID              IMAGE                        STATE    MANIFEST              AGE\n\
             artifact/demo   cluster.local:5000/demo:v1   active   sha256:0123456789ab   3d\n"
        );
    }

    #[test]
    fn service_rows_show_selector_ports_and_endpoints() {
        let s = entity(
            "service/web",
            json!({"selector": {"app": "web", "tier": "front"}, "port": 80, "target_port": 8080}),
            json!({"endpoints": ["10.88.0.5:8080", "10.88.0.6:8080", "10.88.0.7:8080", "10.88.0.8:8080"]}),
            7200,
        );
        let t = entity_table(Some(Kind::Service), &[s], now()).render();
        let row = t.lines().nth(1).expect("row");
        assert!(row.contains("app=web,tier=front   80->8080   "), "{row}");
        assert!(
            row.contains("10.88.0.5:8080,10.88.0.6:8080,10.88.0.7:8080 + 1 more...   120m"),
            "{row}"
        );
    }

    #[test]
    fn service_rows_show_the_address_of_each_endpoint_object() {
        let s = entity(
            "service/web",
            json!({"selector": {"app": "web"}, "port": 8080}),
            json!({"endpoints": [
                {"ip": "10.88.0.5", "port": 8080, "address": "10.88.0.5:8080",
                 "node": "n1", "sandbox": "sandbox/web-1"},
                {"ip": "10.88.0.6", "port": 8080, "address": "10.88.0.6:8080",
                 "node": "n2", "sandbox": "sandbox/web-2"}]}),
            60,
        );
        let t = entity_table(Some(Kind::Service), &[s], now()).render();
        let row = t.lines().nth(1).expect("row");
        assert!(
            row.contains("app=web    8080   10.88.0.5:8080,10.88.0.6:8080   60s"),
            "{row}"
        );
    }

    #[test]
    fn mixed_tables_show_kind_and_revision() {
        let a = entity("sandbox/a", json!({}), json!({}), 10);
        let b = entity("service/b", json!({}), json!({}), 10);
        assert_eq!(
            entity_table(None, &[a, b], now()).render(),
            "ID          KIND      REVISION   AGE\n\
             sandbox/a   sandbox   7          10s\n\
             service/b   service   7          10s\n"
        );
    }

    #[test]
    fn odd_status_documents_render_without_failing() {
        let weird = entity("sandbox/w", json!({"containers": "x"}), json!([1, 2]), 1);
        let text = entity_table(Some(Kind::Sandbox), &[weird], now()).render();
        assert!(text.contains("sandbox/w   <none>"), "{text}");
        let svc = entity(
            "service/s",
            json!({"port": "x"}),
            json!({"endpoints": 4}),
            1,
        );
        assert!(
            entity_table(Some(Kind::Service), &[svc], now())
                .render()
                .contains("<none>   4")
        );
    }

    #[test]
    fn short_states_and_digests() {
        let s = entity("sandbox/a", json!({}), json!({"phase": "failed"}), 1);
        assert_eq!(short_state(&s), "failed");
        let a = entity("artifact/a", json!({"state": "archived"}), json!({}), 1);
        assert_eq!(short_state(&a), "archived");
        assert_eq!(short_digest(""), NONE);
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
    }
}
