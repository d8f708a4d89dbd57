//! A service's `Status:` section: message, observed revision and its endpoints.

use serde_json::Value;

use super::super::render::RenderError;
use super::{labeled_fields, other_fields, table_or_none};

/// Status keys this section lays out itself; the rest are printed as YAML after it.
const KNOWN: [&str; 3] = ["message", "observed_revision", "endpoints"];

/// A service's status: message, observed revision, then one row per endpoint with the
/// sandbox behind it, then any other fields as YAML. Fails only when YAML rendering fails.
pub(super) fn status_section(status: &Value) -> Result<String, RenderError> {
    let mut out = labeled_fields(
        status,
        &[
            ("Message", "message"),
            ("Observed revision", "observed_revision"),
        ],
    );
    out.push_str("  Endpoints:\n");
    out.push_str(&table_or_none(
        status["endpoints"].as_array(),
        &["address", "node", "sandbox"],
        endpoint_row,
    ));
    out.push_str(&other_fields(status, &KNOWN)?);
    Ok(out)
}

/// One endpoint's cells: address (the endpoint itself when it is a bare string), node and
/// sandbox, `-` for a missing or empty field.
fn endpoint_row(e: &Value) -> Vec<String> {
    let field = |k: &str| match &e[k] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "-".to_string(),
    };
    let address = match e {
        Value::String(s) => s.clone(),
        _ => field("address"),
    };
    vec![address, field("node"), field("sandbox")]
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use converge_watch::Entity;
    use serde_json::json;

    use super::super::describe;

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
}
