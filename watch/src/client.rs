//! `EntityClient`: a typed, cheaply clonable client of the entity server's gRPC API.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::address::ServerAddress;
use crate::entity::{Entity, EntityId, Kind};
use crate::proto;
use crate::proto::entities_client::EntitiesClient;

pub mod auth;
mod connect;
mod error;
mod wire;

pub use auth::{BearerToken, ClientOptions, ClientTls, CredentialError};
pub use error::{CURRENT_REVISION_METADATA, ClientError};
use wire::{decode, decode_watch_event, put_request, required, to_json};

/// Largest response the client accepts (a full list can be large; one entity is at most 1 MiB).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Which entities a list or watch covers; the default covers everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this kind; `None` for every kind.
    pub kind: Option<Kind>,
    /// Only sandboxes whose `spec.node` is this node (other kinds are not filtered);
    /// `None` for every node.
    pub node: Option<String>,
    /// With `node`: also sandboxes that name no node.
    pub include_unassigned: bool,
}

impl ListFilter {
    /// True when `entity` passes this filter, by the same rule the server applies.
    pub fn matches(&self, entity: &Entity) -> bool {
        if self.kind.is_some_and(|k| k != entity.kind) {
            return false;
        }
        match &self.node {
            Some(node) if entity.kind == Kind::Sandbox => {
                let own = entity.node();
                own == node || (self.include_unassigned && own.is_empty())
            }
            _ => true,
        }
    }

    fn kind_str(&self) -> String {
        self.kind
            .map(|k| k.as_str().to_string())
            .unwrap_or_default()
    }
}

/// One put of an atomic batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PutSpec {
    /// The entity to create or update.
    pub id: EntityId,
    /// Its desired state.
    pub spec: Value,
    /// `None`: unconditional. `Some(0)`: create only. `Some(n)`: only if the current revision is `n`.
    pub expected_revision: Option<i64>,
}

/// One decoded message of a raw watch.
#[derive(Debug, Clone, PartialEq)]
pub enum RawWatchEvent {
    /// Created or updated; `Entity::revision` is the change's revision.
    Put(Entity),
    /// Deleted at `revision`; `entity` is the last state before deletion.
    Delete {
        /// Last state before deletion.
        entity: Entity,
        /// Revision of the deletion.
        revision: i64,
    },
    /// The requested revision is no longer in the server's history: relist and watch again.
    Compacted {
        /// The oldest revision the server can still replay from.
        compact_revision: i64,
    },
    /// Nothing matched up to `revision`; a watcher may advance its cursor to it.
    Progress {
        /// The store's current revision.
        revision: i64,
    },
}

/// The stream `watch_raw` returns: decoded events until the server or the connection ends it.
pub type RawWatchStream = BoxStream<'static, Result<RawWatchEvent, ClientError>>;

/// A client of one entity server. Cloning is cheap and clones share one connection, which
/// reconnects by itself after the server comes back.
#[derive(Debug, Clone)]
pub struct EntityClient {
    inner: EntitiesClient<InterceptedService<Channel, auth::AttachToken>>,
    address: Arc<str>,
}

impl EntityClient {
    /// Connects to the server at `addr`. Fails with [`ClientError::Unavailable`] naming the
    /// address when nothing listens there or the connection does not come up in time.
    pub async fn connect(addr: &ServerAddress) -> Result<EntityClient, ClientError> {
        EntityClient::connect_any(std::slice::from_ref(addr)).await
    }

    /// Connects to the first of `addrs` that answers, trying them in order. The client then
    /// fails over by itself: whenever its connection breaks, the next call reconnects to the
    /// same server if it answers, else to the next one in the list. Fails with
    /// [`ClientError::Unavailable`] (listing every address and why) when none answers, or
    /// `Invalid` when `addrs` is empty.
    pub async fn connect_any(addrs: &[ServerAddress]) -> Result<EntityClient, ClientError> {
        EntityClient::connect_with(addrs, &ClientOptions::default()).await
    }

    /// Like [`EntityClient::connect_any`], and every call then carries what `options` say
    /// (a bearer token, required by servers listening on TCP). A refused token shows up
    /// on the first call as [`ClientError::Unauthenticated`].
    pub async fn connect_with(
        addrs: &[ServerAddress],
        options: &ClientOptions,
    ) -> Result<EntityClient, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Invalid(
                "no entity server address given".to_string(),
            ));
        }
        let address = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let channel = connect::channel(addrs, options, &address).await?;
        let inner = EntitiesClient::with_interceptor(channel, auth::AttachToken::new(options))
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        tracing::debug!(%address, "connected to entity server");
        Ok(EntityClient {
            inner,
            address: address.into(),
        })
    }

    /// The address this client was given, as `unix:PATH` or `tcp:HOST:PORT`; several
    /// addresses are joined by commas.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Reads one entity; `Ok(None)` when it does not exist.
    pub async fn get(&self, id: &EntityId) -> Result<Option<Entity>, ClientError> {
        let req = proto::GetRequest { id: id.to_string() };
        match self.inner.clone().get(req).await {
            Ok(resp) => resp.into_inner().entity.as_ref().map(decode).transpose(),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(self.error(status, Some(id))),
        }
    }

    /// Lists the entities passing `filter`, consistent at the returned store revision;
    /// watch from that revision + 1 to miss nothing.
    pub async fn list(&self, filter: &ListFilter) -> Result<(Vec<Entity>, i64), ClientError> {
        let req = proto::ListRequest {
            kind: filter.kind_str(),
            node: filter.node.clone().unwrap_or_default(),
            include_unassigned: filter.include_unassigned,
        };
        let resp = self
            .inner
            .clone()
            .list(req)
            .await
            .map_err(|s| self.error(s, None))?;
        let resp = resp.into_inner();
        let entities = resp
            .entities
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((entities, resp.revision))
    }

    /// Creates or updates one entity's spec and returns it as stored. With
    /// `expected_revision` `Some(0)` it only creates; with `Some(n)` it only updates revision
    /// `n`, failing with [`ClientError::Conflict`] otherwise.
    pub async fn put(
        &self,
        id: &EntityId,
        spec: &Value,
        expected_revision: Option<i64>,
    ) -> Result<Entity, ClientError> {
        let req = put_request(id, spec, expected_revision)?;
        let resp = self
            .inner
            .clone()
            .put(req)
            .await
            .map_err(|s| self.error(s, Some(id)))?;
        required(resp.into_inner().entity, "put response")
    }

    /// Applies several puts atomically: on any failure none of them is applied.
    /// Returns the stored entities in the order of `puts`.
    pub async fn put_batch(&self, puts: Vec<PutSpec>) -> Result<Vec<Entity>, ClientError> {
        let first = puts.first().map(|p| p.id.clone());
        let reqs = puts
            .iter()
            .map(|p| put_request(&p.id, &p.spec, p.expected_revision))
            .collect::<Result<Vec<_>, _>>()?;
        let resp = self
            .inner
            .clone()
            .put_batch(proto::PutBatchRequest { puts: reqs })
            .await
            .map_err(|s| {
                self.error(
                    s,
                    if puts.len() == 1 {
                        first.as_ref()
                    } else {
                        None
                    },
                )
            })?;
        resp.into_inner().entities.iter().map(decode).collect()
    }

    /// Replaces an entity's status if its revision is still `expected_revision`; fails with
    /// [`ClientError::Conflict`] (carrying the current revision) when it has moved on.
    pub async fn patch_status(
        &self,
        id: &EntityId,
        status: &Value,
        expected_revision: i64,
    ) -> Result<Entity, ClientError> {
        let req = proto::PatchStatusRequest {
            id: id.to_string(),
            status_json: to_json(status, "status")?,
            expected_revision,
        };
        let resp = self
            .inner
            .clone()
            .patch_status(req)
            .await
            .map_err(|s| self.error(s, Some(id)))?;
        required(resp.into_inner().entity, "patch_status response")
    }

    /// Deletes an entity (only at `expected_revision` if given) and returns its last state.
    /// Fails with [`ClientError::NotFound`] when it does not exist.
    pub async fn delete(
        &self,
        id: &EntityId,
        expected_revision: Option<i64>,
    ) -> Result<Entity, ClientError> {
        let req = proto::DeleteRequest {
            id: id.to_string(),
            expected_revision,
        };
        let resp = self
            .inner
            .clone()
            .delete(req)
            .await
            .map_err(|s| self.error(s, Some(id)))?;
        required(resp.into_inner().entity, "delete response")
    }

    /// Opens a watch of the entities passing `filter` from `from_revision` (0 = from now on).
    /// The stream ends (possibly with an error) when the server or the connection ends it;
    /// reconnecting is the caller's job (see [`crate::stream::watch_stream`]).
    pub async fn watch_raw(
        &self,
        filter: &ListFilter,
        from_revision: i64,
    ) -> Result<RawWatchStream, ClientError> {
        let req = proto::WatchRequest {
            kind: filter.kind_str(),
            node: filter.node.clone().unwrap_or_default(),
            include_unassigned: filter.include_unassigned,
            from_revision,
        };
        let resp = self
            .inner
            .clone()
            .watch(req)
            .await
            .map_err(|s| self.error(s, None))?;
        let address = self.address.clone();
        let stream = resp.into_inner().map(move |item| match item {
            Ok(ev) => decode_watch_event(&ev),
            Err(status) => Err(ClientError::from_status(status, &address, None)),
        });
        Ok(stream.boxed())
    }

    fn error(&self, status: Status, id: Option<&EntityId>) -> ClientError {
        ClientError::from_status(status, &self.address, id)
    }
}

#[cfg(test)]
mod tests;
