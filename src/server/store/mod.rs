//! The store trait behind the entity server, shaped like etcd: one store-wide revision,
//! a bounded history of changes to replay watches from, and compaction.

use async_trait::async_trait;
use converge_watch::{Entity, EntityId, Kind};
use futures::stream::BoxStream;
use serde_json::Value;

#[doc(hidden)]
pub mod conformance;
pub mod etcd;
pub mod redb;

pub use self::redb::{DEFAULT_HISTORY_LIMIT, RedbStore};

/// One put of a batch.
#[derive(Debug, Clone)]
pub struct PutOp {
    /// The entity to create or update.
    pub id: EntityId,
    /// Its new spec (already validated by the caller).
    pub spec: Value,
    /// `None`: unconditional. `Some(0)`: create only. `Some(n)`: only if the current revision is `n`.
    pub expected_revision: Option<i64>,
}

/// A change as the store records it, in revision order.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    /// Created or updated; `entity.revision` is the revision of this change.
    Put {
        /// The new state.
        entity: Entity,
        /// The state before, if it existed (used to filter watches by node).
        prev: Option<Entity>,
    },
    /// Deleted at `revision`.
    Delete {
        /// The last state before deletion.
        prev: Entity,
        /// Revision of the deletion.
        revision: i64,
    },
}

impl StoreEvent {
    /// Revision at which this change happened.
    pub fn revision(&self) -> i64 {
        match self {
            StoreEvent::Put { entity, .. } => entity.revision,
            StoreEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// What a consistent list returns.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Entities, ordered by id.
    pub entities: Vec<Entity>,
    /// Store revision the list was read at.
    pub revision: i64,
}

/// Failures of a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entity does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An expected revision did not match.
    #[error("conflict on {id}: expected revision {expected}, current revision {current}")]
    Conflict {
        /// The entity concerned.
        id: String,
        /// What the caller expected (0 = must not exist).
        expected: i64,
        /// What the store has (0 = does not exist).
        current: i64,
    },
    /// A watch asked for history the store no longer keeps.
    #[error("revision {requested} is compacted; the oldest revision kept is {compact_revision}")]
    Compacted {
        /// What the caller asked for.
        requested: i64,
        /// The oldest revision that can still be watched from.
        compact_revision: i64,
    },
    /// The store cannot be reached or failed internally.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A fenced write was refused: the leader key the fence names no longer has the
    /// create revision the fence holds (leadership was lost or passed on). Nothing changed.
    #[error("fence lost: leader key {key} no longer has create revision {fencing}")]
    FenceLost {
        /// The leader key.
        key: String,
        /// The create revision the writer's term started with.
        fencing: i64,
    },
    /// Stored data could not be decoded.
    #[error("corrupt record {key}: {message}")]
    Corrupt {
        /// The record.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Proof of leadership a store checks atomically with a write: the leader key and the
/// create revision it had when the writer's term began (its fencing revision). Only a
/// store on the same etcd as the election can check one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The full etcd key of the leader record (`<prefix>/leader/<task>`).
    pub key: String,
    /// The leader key's create revision at the start of the term.
    pub fencing: i64,
}

/// A stream of changes from a watch, in revision order. It yields `Err(Compacted)` and ends
/// if the watcher falls so far behind that history it still needed was compacted.
pub type EventStream = BoxStream<'static, Result<StoreEvent, StoreError>>;

/// The persistence behind the entity server. Every implementation guarantees:
/// revisions are store-wide and strictly increasing; every successful write gets a new one
/// (the changes of one batch may share a revision, as in an etcd transaction, or get one
/// each, as in redb: callers must not assume either); a batch is all-or-nothing; a watch
/// from revision `r` delivers every change with revision `>= r` exactly once and in order,
/// or answers `Compacted`. The checks in [`conformance`] test all of this.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one entity.
    async fn get(&self, id: &EntityId) -> Result<Option<Entity>, StoreError>;

    /// Lists entities of one kind (or all), consistent at one revision.
    async fn list(&self, kind: Option<Kind>) -> Result<Listing, StoreError>;

    /// Creates or updates specs atomically; status and creation fields are kept on update.
    /// A put whose spec equals the stored one is a no-op returning the stored entity.
    async fn put(&self, ops: Vec<PutOp>) -> Result<Vec<Entity>, StoreError>;

    /// Replaces the status if the entity's revision is `expected_revision`.
    async fn patch_status(
        &self,
        id: &EntityId,
        status: Value,
        expected_revision: i64,
    ) -> Result<Entity, StoreError>;

    /// Deletes an entity (optionally only at `expected_revision`); returns its last state
    /// and the revision of the deletion.
    async fn delete(
        &self,
        id: &EntityId,
        expected_revision: Option<i64>,
    ) -> Result<(Entity, i64), StoreError>;

    /// Like [`Store::delete`], but only while `fence` (when given) still holds: the check
    /// and the delete are one atomic step where the store can do that (etcd: one `Txn`
    /// comparing the leader key's create revision and the entity's mod revision). A lost
    /// fence answers `FenceLost` and deletes nothing. Without a fence this is `delete`. The
    /// default implementation cannot check a fence and refuses one with `Unavailable`.
    async fn delete_fenced(
        &self,
        id: &EntityId,
        expected_revision: Option<i64>,
        fence: Option<&Fence>,
    ) -> Result<(Entity, i64), StoreError> {
        match fence {
            None => self.delete(id, expected_revision).await,
            Some(fence) => Err(StoreError::Unavailable {
                message: format!(
                    "this store cannot check the fence on {}; refusing to delete {id}",
                    fence.key
                ),
                source: None,
            }),
        }
    }

    /// Watches changes of one kind (or all) from `from_revision` (0 = from now on).
    async fn watch(
        &self,
        kind: Option<Kind>,
        from_revision: i64,
    ) -> Result<EventStream, StoreError>;

    /// The current store-wide revision.
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Flushes and releases the store; further calls may fail.
    async fn close(&self) -> Result<(), StoreError>;
}
