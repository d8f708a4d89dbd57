//! How entities map onto etcd: key layout `<prefix>/entities/<kind>/<name>`, JSON values
//! without the revision fields (those come from the key's `mod_revision`/`create_revision`).

use chrono::{DateTime, Utc};
use converge_watch::{Entity, EntityId, Kind};
use etcd_client::KeyValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::server::store::StoreError;

/// The key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "/converge";

/// Builds and parses the keys of one store, under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// Normalized: starts with `/` (unless empty), never ends with one.
    prefix: String,
}

impl Keys {
    /// Normalizes `prefix`: a missing leading `/` is added, trailing ones are dropped,
    /// so `converge/`, `/converge` and `/converge/` all name the same keys.
    pub(crate) fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        let prefix = if trimmed.is_empty() || trimmed.starts_with('/') {
            trimmed.to_string()
        } else {
            format!("/{trimmed}")
        };
        Self { prefix }
    }

    /// The normalized prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of one entity.
    pub(crate) fn entity(&self, id: &EntityId) -> String {
        format!("{}/entities/{}/{}", self.prefix, id.kind(), id.name())
    }

    /// The range prefix (ending in `/`) of one kind, or of every entity.
    pub(crate) fn range(&self, kind: Option<Kind>) -> String {
        match kind {
            Some(kind) => format!("{}/entities/{kind}/", self.prefix),
            None => format!("{}/entities/", self.prefix),
        }
    }

    /// A key the store never writes; reading it yields the store-wide revision cheaply.
    pub(crate) fn probe(&self) -> String {
        format!("{}/revision-probe", self.prefix)
    }

    /// The id a key names; `Corrupt` if the key is not an entity key of this prefix.
    pub(crate) fn id_of(&self, key: &[u8]) -> Result<EntityId, StoreError> {
        let text = String::from_utf8_lossy(key);
        let corrupt = |message: &str| StoreError::Corrupt {
            key: text.to_string(),
            message: message.to_string(),
        };
        let rest = text
            .strip_prefix(self.range(None).as_str())
            .ok_or_else(|| corrupt("not under this store's prefix"))?;
        rest.parse()
            .map_err(|e: converge_watch::IdError| corrupt(&e.to_string()))
    }
}

/// What is stored as the value: the entity minus its revisions, which etcd keeps itself.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEntity {
    id: EntityId,
    kind: Kind,
    spec: Value,
    status: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The value to store for `entity`; `Corrupt` only if its JSON cannot be serialized.
pub(crate) fn encode(entity: &Entity) -> Result<Vec<u8>, StoreError> {
    let stored = StoredEntity {
        id: entity.id.clone(),
        kind: entity.kind,
        spec: entity.spec.clone(),
        status: entity.status.clone(),
        created_at: entity.created_at,
        updated_at: entity.updated_at,
    };
    serde_json::to_vec(&stored).map_err(|e| StoreError::Corrupt {
        key: entity.id.to_string(),
        message: format!("cannot encode: {e}"),
    })
}

/// The entity a key-value pair holds, with `revision` = the pair's `mod_revision` and
/// `create_revision` from etcd. `Corrupt` if the key or value is not one this store wrote.
pub(crate) fn decode(keys: &Keys, kv: &KeyValue) -> Result<Entity, StoreError> {
    let id = keys.id_of(kv.key())?;
    let stored: StoredEntity =
        serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            message: format!("value is not an entity: {e}"),
        })?;
    if stored.id != id || stored.kind != id.kind() {
        return Err(StoreError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            message: format!("value holds {} of kind {}", stored.id, stored.kind),
        });
    }
    Ok(Entity {
        id,
        kind: stored.kind,
        spec: stored.spec,
        status: stored.status,
        revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
        created_at: stored.created_at,
        updated_at: stored.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized_to_one_form() {
        for raw in ["/converge", "/converge/", "converge", "converge//"] {
            assert_eq!(Keys::new(raw).prefix(), "/converge", "{raw}");
        }
        assert_eq!(Keys::new("").prefix(), "");
        assert_eq!(Keys::new("/").prefix(), "");
    }

    #[test]
    fn entity_keys_round_trip_through_id_of() {
        let keys = Keys::new("/c");
        let id: EntityId = "sandbox/web-1".parse().expect("id");
        let key = keys.entity(&id);
        assert_eq!(key, "/c/entities/sandbox/web-1");
        assert!(key.starts_with(&keys.range(Some(Kind::Sandbox))));
        assert_eq!(keys.id_of(key.as_bytes()).expect("parse"), id);
    }

    #[test]
    fn foreign_or_malformed_keys_are_corrupt_not_panics() {
        let keys = Keys::new("/c");
        for key in [
            "/other/entities/sandbox/a",
            "/c/entities/sandbox/",
            "/c/entities/nope/a",
            "/c/entities/sandbox/A_b",
        ] {
            assert!(
                matches!(keys.id_of(key.as_bytes()), Err(StoreError::Corrupt { .. })),
                "{key}"
            );
        }
    }
}
