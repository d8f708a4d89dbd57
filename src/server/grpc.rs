//! The gRPC `Entities` service over a [`Store`]: parses and validates requests, maps store
//! errors to gRPC codes, and filters lists and watches by kind and node.

mod watch;

use std::sync::Arc;
use std::time::Duration;

use converge_watch::entity::MAX_ENTITY_BYTES;
use converge_watch::proto::entities_server::Entities;
use converge_watch::proto::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, ListRequest, ListResponse,
    PatchStatusRequest, PatchStatusResponse, PutBatchRequest, PutBatchResponse, PutRequest,
    PutResponse, WatchEvent, WatchRequest,
};
use converge_watch::{Entity, EntityId, validate};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::server::host_ports::{HostPortError, check_host_ports};
use crate::server::store::{PutOp, Store, StoreError};
use watch::Filter;

/// Metadata key carrying the entity's current revision on an `ABORTED` answer.
pub const CURRENT_REVISION_METADATA: &str = "x-converge-current-revision";

/// How long a watch stays silent before it sends a `PROGRESS` event.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// The `Entities` gRPC service. Cheap to clone; every clone shares the store and the
/// shutdown token.
#[derive(Clone)]
pub struct EntitiesService {
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    progress_interval: Duration,
}

impl EntitiesService {
    /// Serves `store`; every open watch stream ends when `shutdown` is cancelled.
    pub fn new(store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        Self {
            store,
            shutdown,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }

    /// Changes how long a watch stays silent before sending `PROGRESS` (default 5 s).
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }
}

/// Maps a store failure to the gRPC status clients see.
pub fn status_from_store(err: StoreError) -> Status {
    match err {
        StoreError::NotFound(id) => Status::not_found(format!("{id} not found")),
        StoreError::Conflict {
            id,
            expected,
            current,
        } => {
            let message = if expected == 0 {
                format!(
                    "{id} already exists: expected revision 0 (create only), current revision {current}"
                )
            } else if current == 0 {
                format!("{id} does not exist: expected revision {expected}, current revision 0")
            } else {
                format!("{id} changed: expected revision {expected}, current revision {current}")
            };
            let mut metadata = MetadataMap::new();
            metadata.insert(CURRENT_REVISION_METADATA, MetadataValue::from(current));
            Status::with_metadata(Code::Aborted, message, metadata)
        }
        e @ StoreError::Compacted { .. } => Status::out_of_range(e.to_string()),
        e @ StoreError::Unavailable { .. } => Status::unavailable(e.to_string()),
        e @ StoreError::Corrupt { .. } => Status::internal(e.to_string()),
        e @ StoreError::FenceLost { .. } => Status::failed_precondition(e.to_string()),
    }
}

fn parse_id(id: &str) -> Result<EntityId, Status> {
    id.parse()
        .map_err(|e| Status::invalid_argument(format!("{id}: id: {e}")))
}

fn parse_json(id: &EntityId, field: &str, bytes: &[u8]) -> Result<Value, Status> {
    if bytes.is_empty() {
        return Err(Status::invalid_argument(format!("{id}: {field}: is empty")));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("{id}: {field}: not valid JSON: {e}")))
}

fn check_expected(id: &EntityId, expected: Option<i64>) -> Result<(), Status> {
    match expected {
        Some(n) if n < 0 => Err(Status::invalid_argument(format!(
            "{id}: expected_revision: {n} is negative"
        ))),
        _ => Ok(()),
    }
}

/// Parses and validates one put; refuses it with `INVALID_ARGUMENT` naming the field.
fn parse_put(req: PutRequest) -> Result<PutOp, Status> {
    let id = parse_id(&req.id)?;
    check_expected(&id, req.expected_revision)?;
    let spec = parse_json(&id, "spec", &req.spec_json)?;
    let entity = Entity::new(id, spec);
    validate(&entity).map_err(|e| {
        Status::invalid_argument(format!("{}: {}: {}", entity.id, e.field, e.message))
    })?;
    Ok(PutOp {
        id: entity.id,
        spec: entity.spec,
        expected_revision: req.expected_revision,
    })
}

/// The (still un-flattened) stream a `Watch` call answers with.
pub type WatchEventStream = tokio_stream::wrappers::ReceiverStream<Result<WatchEvent, Status>>;

#[tonic::async_trait]
impl Entities for EntitiesService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let id = parse_id(&request.get_ref().id)?;
        let entity = self.store.get(&id).await.map_err(status_from_store)?;
        let entity = entity.ok_or_else(|| Status::not_found(format!("{id} not found")))?;
        let revision = self.store.revision().await.map_err(status_from_store)?;
        Ok(Response::new(GetResponse {
            entity: Some(entity.to_proto()),
            revision: revision.max(entity.revision),
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = request.into_inner();
        let filter = Filter::parse(&req.kind, &req.node, req.include_unassigned)?;
        let listing = self
            .store
            .list(filter.kind())
            .await
            .map_err(status_from_store)?;
        let entities = listing
            .entities
            .iter()
            .filter(|e| filter.matches(e))
            .map(Entity::to_proto)
            .collect();
        Ok(Response::new(ListResponse {
            entities,
            revision: listing.revision,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let op = parse_put(request.into_inner())?;
        check_host_ports(self.store.as_ref(), std::slice::from_ref(&op))
            .await
            .map_err(HostPortError::into_status)?;
        let span = tracing::debug_span!("put", id = %op.id);
        let mut out = self
            .store
            .put(vec![op])
            .instrument(span.clone())
            .await
            .map_err(status_from_store)?;
        let _entered = span.enter();
        let entity = out
            .pop()
            .ok_or_else(|| Status::internal("the store returned no entity"))?;
        tracing::debug!(revision = entity.revision, "stored");
        Ok(Response::new(PutResponse {
            entity: Some(entity.to_proto()),
        }))
    }

    async fn put_batch(
        &self,
        request: Request<PutBatchRequest>,
    ) -> Result<Response<PutBatchResponse>, Status> {
        let ops = request
            .into_inner()
            .puts
            .into_iter()
            .map(parse_put)
            .collect::<Result<Vec<_>, _>>()?;
        check_host_ports(self.store.as_ref(), &ops)
            .await
            .map_err(HostPortError::into_status)?;
        let stored = self.store.put(ops).await.map_err(status_from_store)?;
        tracing::debug!(count = stored.len(), "stored batch");
        Ok(Response::new(PutBatchResponse {
            entities: stored.iter().map(Entity::to_proto).collect(),
        }))
    }

    async fn patch_status(
        &self,
        request: Request<PatchStatusRequest>,
    ) -> Result<Response<PatchStatusResponse>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.id)?;
        if req.expected_revision <= 0 {
            return Err(Status::invalid_argument(format!(
                "{id}: expected_revision: is required and must be positive"
            )));
        }
        let status = parse_json(&id, "status", &req.status_json)?;
        if !status.is_object() {
            return Err(Status::invalid_argument(format!(
                "{id}: status: must be a JSON object"
            )));
        }
        let current = self.store.get(&id).await.map_err(status_from_store)?;
        let mut candidate = current.ok_or_else(|| Status::not_found(format!("{id} not found")))?;
        if candidate.revision != req.expected_revision {
            return Err(status_from_store(StoreError::Conflict {
                id: id.to_string(),
                expected: req.expected_revision,
                current: candidate.revision,
            }));
        }
        candidate.status = status;
        let len = candidate.encoded_len();
        if len > MAX_ENTITY_BYTES {
            return Err(Status::invalid_argument(format!(
                "{id}: status: the entity would be {len} bytes, over the limit of {MAX_ENTITY_BYTES} bytes (1 MiB)"
            )));
        }
        let entity = self
            .store
            .patch_status(&id, candidate.status, req.expected_revision)
            .await
            .map_err(status_from_store)?;
        tracing::debug!(id = %id, revision = entity.revision, "status patched");
        Ok(Response::new(PatchStatusResponse {
            entity: Some(entity.to_proto()),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.id)?;
        check_expected(&id, req.expected_revision)?;
        let (entity, revision) = self
            .store
            .delete(&id, req.expected_revision)
            .await
            .map_err(status_from_store)?;
        tracing::debug!(id = %id, revision, "deleted");
        Ok(Response::new(DeleteResponse {
            entity: Some(entity.to_proto()),
            revision,
        }))
    }

    type WatchStream = WatchEventStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<WatchEventStream>, Status> {
        let req = request.into_inner();
        let filter = Filter::parse(&req.kind, &req.node, req.include_unassigned)?;
        let stream = watch::start(
            Arc::clone(&self.store),
            filter,
            req.from_revision,
            self.progress_interval,
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }
}
