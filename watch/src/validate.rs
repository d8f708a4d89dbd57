//! Validation of entities at the API: every refusal names the offending field.

use std::collections::HashSet;
use std::path::{Component, Path};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::entity::{Entity, Kind, MAX_ENTITY_BYTES, is_valid_name};
use crate::spec::{ArtifactSpec, SandboxSpec, ServiceSpec};

/// A refused entity: `field` is a JSON path such as `spec.containers[1].ports[0].port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Paths a mount may not cover: the kernel's and the runtime's own.
const FORBIDDEN_MOUNT_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Checks an entity the way the server does before storing it: size, id, and the
/// spec of its kind. Returns the first problem found; never panics on any input.
pub fn validate(entity: &Entity) -> Result<(), ValidationError> {
    let len = entity.encoded_len();
    if len > MAX_ENTITY_BYTES {
        return Err(ValidationError::new(
            "entity",
            format!("is {len} bytes, over the limit of {MAX_ENTITY_BYTES} bytes (1 MiB)"),
        ));
    }
    if entity.kind != entity.id.kind() {
        return Err(ValidationError::new(
            "kind",
            format!("{} does not match id {}", entity.kind, entity.id),
        ));
    }
    validate_spec(entity.kind, &entity.spec)
}

/// Checks the `spec` document of one kind.
pub fn validate_spec(kind: Kind, spec: &Value) -> Result<(), ValidationError> {
    if !spec.is_object() {
        return Err(ValidationError::new("spec", "must be a JSON object"));
    }
    match kind {
        Kind::Sandbox => validate_sandbox(&typed::<SandboxSpec>(spec)?),
        Kind::Artifact => validate_artifact(&typed::<ArtifactSpec>(spec)?),
        Kind::Service => validate_service(&typed::<ServiceSpec>(spec)?),
    }
}

/// Parses a spec into its typed view, naming the field serde choked on.
pub fn typed<T: DeserializeOwned>(spec: &Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        ValidationError::new(field, e.into_inner().to_string())
    })
}

fn validate_sandbox(s: &SandboxSpec) -> Result<(), ValidationError> {
    if !s.node.is_empty() && !is_valid_name(&s.node) {
        return Err(ValidationError::new(
            "spec.node",
            "must be a DNS label (a-z, 0-9, '-')",
        ));
    }
    for k in s.labels.keys() {
        if k.is_empty() || k.len() > 63 {
            return Err(ValidationError::new(
                "spec.labels",
                format!("bad label key {k:?}"),
            ));
        }
    }
    if s.containers.is_empty() {
        return Err(ValidationError::new(
            "spec.containers",
            "must list at least one container",
        ));
    }
    let mut volumes = HashSet::new();
    for (i, v) in s.volumes.iter().enumerate() {
        let f = format!("spec.volumes[{i}].name");
        if !is_valid_name(&v.name) {
            return Err(ValidationError::new(
                f,
                format!("{:?} is not a DNS label", v.name),
            ));
        }
        if !volumes.insert(v.name.as_str()) {
            return Err(ValidationError::new(
                f,
                format!("duplicate volume {:?}", v.name),
            ));
        }
    }
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    for (i, c) in s.containers.iter().enumerate() {
        let at = format!("spec.containers[{i}]");
        if !is_valid_name(&c.name) {
            return Err(ValidationError::new(
                format!("{at}.name"),
                format!("{:?} is not a DNS label", c.name),
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err(ValidationError::new(
                format!("{at}.name"),
                format!("duplicate container name {:?}", c.name),
            ));
        }
        if c.image.trim().is_empty() || c.image.chars().any(char::is_whitespace) {
            return Err(ValidationError::new(
                format!("{at}.image"),
                "must be an image reference",
            ));
        }
        for k in c.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ValidationError::new(
                    format!("{at}.env"),
                    format!("bad variable name {k:?}"),
                ));
            }
        }
        for (j, p) in c.ports.iter().enumerate() {
            if !(1..=65535).contains(&p.port) {
                return Err(ValidationError::new(
                    format!("{at}.ports[{j}].port"),
                    format!("{} is outside 1-65535", p.port),
                ));
            }
            if !ports.insert(p.port) {
                return Err(ValidationError::new(
                    format!("{at}.ports[{j}].port"),
                    format!("port {} is declared twice in this sandbox", p.port),
                ));
            }
            if let Some(h) = p.host_port
                && !(1..=65535).contains(&h)
            {
                return Err(ValidationError::new(
                    format!("{at}.ports[{j}].host_port"),
                    format!("{h} is outside 1-65535"),
                ));
            }
        }
        for (j, m) in c.mounts.iter().enumerate() {
            if !volumes.contains(m.volume.as_str()) {
                return Err(ValidationError::new(
                    format!("{at}.mounts[{j}].volume"),
                    format!("{:?} is not declared in spec.volumes", m.volume),
                ));
            }
            check_mount_path(&m.path)
                .map_err(|msg| ValidationError::new(format!("{at}.mounts[{j}].path"), msg))?;
        }
        if let Some(r) = &c.resources {
            if r.memory_mb == Some(0) {
                return Err(ValidationError::new(
                    format!("{at}.resources.memory_mb"),
                    "must be at least 1",
                ));
            }
            if r.cpu_millis == Some(0) {
                return Err(ValidationError::new(
                    format!("{at}.resources.cpu_millis"),
                    "must be at least 1",
                ));
            }
        }
    }
    Ok(())
}

fn check_mount_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path:?} must be absolute"));
    }
    if path.contains('\0') {
        return Err("must not contain NUL".into());
    }
    if path.split('/').any(|seg| seg == "." || seg == "..")
        || p.components().any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!("{path:?} must not contain '.' or '..'"));
    }
    if p == Path::new("/") {
        return Err("cannot mount over /".into());
    }
    for root in FORBIDDEN_MOUNT_ROOTS {
        if p.starts_with(root) {
            return Err(format!("cannot mount over {root}"));
        }
    }
    Ok(())
}

fn validate_artifact(a: &ArtifactSpec) -> Result<(), ValidationError> {
    if a.image.trim().is_empty() || a.image.chars().any(char::is_whitespace) {
        return Err(ValidationError::new(
            "spec.image",
            "must be an image reference",
        ));
    }
    if !is_sha256_digest(&a.manifest) {
        return Err(ValidationError::new(
            "spec.manifest",
            format!(
                "{:?} is not a digest of the form sha256:<64 lowercase hex>",
                a.manifest
            ),
        ));
    }
    Ok(())
}

fn validate_service(s: &ServiceSpec) -> Result<(), ValidationError> {
    if s.selector.is_empty() {
        return Err(ValidationError::new(
            "spec.selector",
            "must have at least one label",
        ));
    }
    if !(1..=65535).contains(&s.port) {
        return Err(ValidationError::new(
            "spec.port",
            format!("{} is outside 1-65535", s.port),
        ));
    }
    if let Some(t) = s.target_port
        && !(1..=65535).contains(&t)
    {
        return Err(ValidationError::new(
            "spec.target_port",
            format!("{t} is outside 1-65535"),
        ));
    }
    Ok(())
}

/// True for `sha256:` followed by exactly 64 lowercase hex digits: safe as a file name.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sandbox(spec: Value) -> Result<(), ValidationError> {
        validate(&Entity::new("sandbox/web".parse().expect("id"), spec))
    }

    fn field_of(r: Result<(), ValidationError>) -> String {
        r.expect_err("should be refused").field
    }

    fn ok_spec() -> Value {
        json!({"containers": [{"name": "app", "image": "busybox", "ports": [{"port": 80}],
               "mounts": [{"volume": "data", "path": "/data"}]}],
               "volumes": [{"name": "data"}]})
    }

    #[test]
    fn a_complete_sandbox_is_accepted() {
        sandbox(ok_spec()).expect("valid");
    }

    #[test]
    fn an_empty_container_list_is_refused() {
        assert_eq!(
            field_of(sandbox(json!({"containers": []}))),
            "spec.containers"
        );
        assert_eq!(field_of(sandbox(json!({}))), "spec");
    }

    #[test]
    fn duplicate_container_names_are_refused() {
        let s = json!({"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]});
        assert_eq!(field_of(sandbox(s)), "spec.containers[1].name");
    }

    #[test]
    fn ports_outside_the_tcp_range_are_refused() {
        for port in [0, 65536, 100000] {
            let s = json!({"containers": [{"name": "a", "image": "x", "ports": [{"port": port}]}]});
            assert_eq!(field_of(sandbox(s)), "spec.containers[0].ports[0].port");
        }
        let s = json!({"containers": [{"name": "a", "image": "x", "ports": [{"port": -1}]}]});
        assert_eq!(field_of(sandbox(s)), "spec.containers[0].ports[0].port");
    }

    #[test]
    fn mounts_of_undeclared_volumes_are_refused() {
        let s = json!({"containers": [{"name": "a", "image": "x",
                        "mounts": [{"volume": "nope", "path": "/d"}]}]});
        assert_eq!(field_of(sandbox(s)), "spec.containers[0].mounts[0].volume");
    }

    #[test]
    fn relative_dotdot_and_kernel_mount_paths_are_refused() {
        for path in [
            "data",
            "/data/../etc",
            "/./x",
            "/proc",
            "/sys/fs",
            "/dev",
            "/",
        ] {
            let s = json!({"containers": [{"name": "a", "image": "x",
                            "mounts": [{"volume": "v", "path": path}]}],
                           "volumes": [{"name": "v"}]});
            assert_eq!(
                field_of(sandbox(s)),
                "spec.containers[0].mounts[0].path",
                "{path}"
            );
        }
    }

    #[test]
    fn wrong_types_and_unknown_fields_name_the_field() {
        let s = json!({"containers": [{"name": "a", "image": 5}]});
        assert_eq!(field_of(sandbox(s)), "spec.containers[0].image");
        let s = json!({"containers": [{"name": "a", "image": "x", "imagee": "y"}]});
        assert!(sandbox(s).expect_err("unknown").message.contains("imagee"));
        let s = json!({"state": "dancing", "containers": [{"name": "a", "image": "x"}]});
        assert_eq!(field_of(sandbox(s)), "spec.state");
    }

    #[test]
    fn oversize_entities_are_refused() {
        let big = "x".repeat(MAX_ENTITY_BYTES);
        let s = json!({"labels": {"a": big}, "containers": [{"name": "a", "image": "x"}]});
        assert_eq!(field_of(sandbox(s)), "entity");
    }

    #[test]
    fn artifacts_need_a_real_digest() {
        let id: crate::EntityId = "artifact/demo".parse().expect("id");
        let good = json!({"image": "cluster.local:5000/demo:v1",
                          "manifest": format!("sha256:{}", "a".repeat(64))});
        validate(&Entity::new(id.clone(), good)).expect("valid");
        for d in ["sha256:abc", "sha256:../../etc/passwd", "md5:00", ""] {
            let bad = json!({"image": "x", "manifest": d});
            assert_eq!(
                field_of(validate(&Entity::new(id.clone(), bad))),
                "spec.manifest"
            );
        }
    }
}
