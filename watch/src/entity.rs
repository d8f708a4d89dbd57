//! The entity model: validated ids, kinds, and the `Entity` record every layer passes around.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::proto;

/// Largest accepted entity: id, spec and status serialized together.
pub const MAX_ENTITY_BYTES: usize = 1024 * 1024;

/// Why an id, kind or name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is not of the form `kind/name`.
    #[error("invalid id {0:?}: expected \"<kind>/<name>\"")]
    Malformed(String),
    /// The kind is not one converge knows.
    #[error("unknown kind {0:?}: expected one of sandbox, artifact, service")]
    UnknownKind(String),
    /// The name breaks the DNS-label rule.
    #[error(
        "invalid name {0:?}: must be 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    BadName(String),
}

/// The kinds of entity the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A group of containers sharing one network namespace.
    Sandbox,
    /// An image in the artifact registry.
    Artifact,
    /// A stable name for the running sandboxes matching a label selector.
    Service,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 3] = [Kind::Sandbox, Kind::Artifact, Kind::Service];

    /// The lowercase name used in ids and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sandbox => "sandbox",
            Kind::Artifact => "artifact",
            Kind::Service => "service",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sandbox" => Ok(Kind::Sandbox),
            "artifact" => Ok(Kind::Artifact),
            "service" => Ok(Kind::Service),
            other => Err(IdError::UnknownKind(other.to_string())),
        }
    }
}

/// True when `name` matches `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && ok(b[0])
        && ok(b[b.len() - 1])
        && b.iter().all(|&c| ok(c) || c == b'-')
}

/// A validated `kind/name` id. Constructing one guarantees both parts are valid,
/// so it is safe to use in paths and container names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId {
    kind: Kind,
    name: String,
}

impl EntityId {
    /// Builds an id from parts; fails if the name is not a DNS label.
    pub fn new(kind: Kind, name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        if !is_valid_name(&name) {
            return Err(IdError::BadName(name));
        }
        Ok(Self { kind, name })
    }

    /// The kind part.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

impl FromStr for EntityId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s
            .split_once('/')
            .ok_or_else(|| IdError::Malformed(s.to_string()))?;
        EntityId::new(kind.parse()?, name)
    }
}

impl Serialize for EntityId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EntityId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One entity as the server keeps it: the JSON contract of DESIGN.md section 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// `kind/name`.
    pub id: EntityId,
    /// Same as `id.kind()`, repeated because the contract has it.
    pub kind: Kind,
    /// Desired state, written by users.
    pub spec: Value,
    /// Observed state, written by controllers; `{}` until one does.
    #[serde(default = "empty_object")]
    pub status: Value,
    /// Store-wide revision of the last change to this entity.
    #[serde(default)]
    pub revision: i64,
    /// Store-wide revision at which the entity was created.
    #[serde(default)]
    pub create_revision: i64,
    /// When the entity was created.
    #[serde(default = "epoch")]
    pub created_at: DateTime<Utc>,
    /// When spec or status last changed.
    #[serde(default = "epoch")]
    pub updated_at: DateTime<Utc>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// Why a wire entity could not be turned into an [`Entity`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The id or kind is invalid.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The spec or status is not JSON.
    #[error("{field} of {id} is not valid JSON")]
    Json {
        /// `spec` or `status`.
        field: &'static str,
        /// The entity concerned.
        id: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The kind field disagrees with the id.
    #[error("kind {kind:?} does not match id {id}")]
    KindMismatch {
        /// The id.
        id: String,
        /// The kind field.
        kind: String,
    },
}

impl Entity {
    /// A new entity with an empty status and no server-kept fields yet.
    pub fn new(id: EntityId, spec: Value) -> Self {
        Self {
            kind: id.kind(),
            id,
            spec,
            status: empty_object(),
            revision: 0,
            create_revision: 0,
            created_at: epoch(),
            updated_at: epoch(),
        }
    }

    /// The node a sandbox is meant for (`spec.node`), or `""` if none or not a sandbox.
    pub fn node(&self) -> &str {
        if self.kind != Kind::Sandbox {
            return "";
        }
        self.spec.get("node").and_then(Value::as_str).unwrap_or("")
    }

    /// Size of the entity as the contract's JSON, used for the 1 MiB limit.
    pub fn encoded_len(&self) -> usize {
        serde_json::to_vec(self)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
    }

    /// Converts to the wire form.
    pub fn to_proto(&self) -> proto::Entity {
        proto::Entity {
            id: self.id.to_string(),
            kind: self.kind.to_string(),
            spec_json: serde_json::to_vec(&self.spec).unwrap_or_default(),
            status_json: if is_empty_status(&self.status) {
                Vec::new()
            } else {
                serde_json::to_vec(&self.status).unwrap_or_default()
            },
            revision: self.revision,
            create_revision: self.create_revision,
            created_at_ms: self.created_at.timestamp_millis(),
            updated_at_ms: self.updated_at.timestamp_millis(),
        }
    }

    /// Converts from the wire form; fails on an invalid id or non-JSON documents.
    pub fn from_proto(p: &proto::Entity) -> Result<Self, DecodeError> {
        let id: EntityId = p.id.parse()?;
        if !p.kind.is_empty() && p.kind != id.kind().as_str() {
            return Err(DecodeError::KindMismatch {
                id: p.id.clone(),
                kind: p.kind.clone(),
            });
        }
        let json = |field: &'static str, bytes: &[u8]| -> Result<Value, DecodeError> {
            if bytes.is_empty() {
                return Ok(empty_object());
            }
            serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
                field,
                id: p.id.clone(),
                source,
            })
        };
        Ok(Self {
            kind: id.kind(),
            spec: json("spec", &p.spec_json)?,
            status: json("status", &p.status_json)?,
            id,
            revision: p.revision,
            create_revision: p.create_revision,
            created_at: millis(p.created_at_ms),
            updated_at: millis(p.updated_at_ms),
        })
    }
}

fn is_empty_status(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_label_rule() {
        for good in ["a", "web", "web-1", "0", &"a".repeat(63)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Web",
            "a_b",
            "a.b",
            "a/b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn ids_parse_and_print_as_kind_slash_name() {
        let id: EntityId = "sandbox/web".parse().expect("valid");
        assert_eq!(id.kind(), Kind::Sandbox);
        assert_eq!(id.name(), "web");
        assert_eq!(id.to_string(), "sandbox/web");
        assert!(matches!(
            "web".parse::<EntityId>(),
            Err(IdError::Malformed(_))
        ));
        assert!(matches!(
            "pod/web".parse::<EntityId>(),
            Err(IdError::UnknownKind(_))
        ));
        assert!(matches!(
            "sandbox/../x".parse::<EntityId>(),
            Err(IdError::BadName(_))
        ));
    }

    #[test]
    fn entities_round_trip_through_the_wire_form() {
        let mut e = Entity::new(
            "sandbox/a".parse().expect("id"),
            serde_json::json!({"x": 1}),
        );
        e.revision = 7;
        e.created_at = millis(1_700_000_000_123);
        let back = Entity::from_proto(&e.to_proto()).expect("decode");
        assert_eq!(back, e);
    }
}
