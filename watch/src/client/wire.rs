//! Conversions between the client's types and the gRPC messages, with typed errors for malformed answers.

use serde_json::Value;

use super::{ClientError, RawWatchEvent};
use crate::entity::{Entity, EntityId};
use crate::proto;

/// The wire form of one put; `Invalid` when the spec cannot be serialized.
pub(super) fn put_request(
    id: &EntityId,
    spec: &Value,
    expected_revision: Option<i64>,
) -> Result<proto::PutRequest, ClientError> {
    Ok(proto::PutRequest {
        id: id.to_string(),
        spec_json: to_json(spec, "spec")?,
        expected_revision,
    })
}

/// `value` as JSON bytes; `Invalid` naming `field` when it cannot be serialized.
pub(super) fn to_json(value: &Value, field: &str) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|e| ClientError::Invalid(format!("{field}: {e}")))
}

/// The entity a response carries; `Decode` when it is malformed.
pub(super) fn decode(p: &proto::Entity) -> Result<Entity, ClientError> {
    Entity::from_proto(p).map_err(|source| ClientError::Decode {
        context: format!("entity {:?}", p.id),
        source: Some(source),
    })
}

/// The entity a response must carry; `Decode` naming `context` when it is missing or malformed.
pub(super) fn required(p: Option<proto::Entity>, context: &str) -> Result<Entity, ClientError> {
    match p {
        Some(p) => decode(&p),
        None => Err(ClientError::Decode {
            context: format!("{context} carries no entity"),
            source: None,
        }),
    }
}

/// One watch event off the wire; `Decode` for an unknown type or a malformed entity.
pub(super) fn decode_watch_event(ev: &proto::WatchEvent) -> Result<RawWatchEvent, ClientError> {
    use proto::watch_event::Type;
    let ty = Type::try_from(ev.r#type).map_err(|_| ClientError::Decode {
        context: format!("unknown watch event type {}", ev.r#type),
        source: None,
    })?;
    match ty {
        Type::Put => Ok(RawWatchEvent::Put(required(
            ev.entity.clone(),
            "watch PUT event",
        )?)),
        Type::Delete => Ok(RawWatchEvent::Delete {
            entity: required(ev.entity.clone(), "watch DELETE event")?,
            revision: ev.revision,
        }),
        Type::Compacted => Ok(RawWatchEvent::Compacted {
            compact_revision: ev.compact_revision,
        }),
        Type::Progress => Ok(RawWatchEvent::Progress {
            revision: ev.revision,
        }),
    }
}
