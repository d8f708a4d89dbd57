//! Writes entity status with optimistic concurrency: patch at the expected revision, and on a
//! conflict re-read and recompute, a bounded number of times.

use std::sync::Arc;

use async_trait::async_trait;
use converge_watch::client::{ClientError, EntityClient};
use converge_watch::{Entity, EntityId};
use serde_json::Value;

use super::plan::{Executor, PlannedAction, Verb};
use super::reconciler::BoxError;
use super::tracker::WriteTracker;

/// Why a status store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusStoreError {
    /// The entity's revision is no longer the expected one.
    #[error("conflict writing status of {id}: revision moved on")]
    Conflict {
        /// The entity concerned.
        id: EntityId,
    },
    /// The entity is gone.
    #[error("{id} not found")]
    NotFound {
        /// The entity concerned.
        id: EntityId,
    },
    /// Anything else (server unreachable, invalid request, ...).
    #[error("status store failed for {id}")]
    Other {
        /// The entity concerned.
        id: EntityId,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
}

/// Where statuses are read and written; the entity client in production, a fake in tests.
#[async_trait]
pub trait StatusStore: Send + Sync + 'static {
    /// The current entity.
    async fn get(&self, id: &EntityId) -> Result<Entity, StatusStoreError>;
    /// Replaces the status if the entity is still at `expected_revision`.
    async fn patch_status(
        &self,
        id: &EntityId,
        status: &Value,
        expected_revision: i64,
    ) -> Result<Entity, StatusStoreError>;
}

#[async_trait]
impl StatusStore for EntityClient {
    async fn get(&self, id: &EntityId) -> Result<Entity, StatusStoreError> {
        match EntityClient::get(self, id).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) | Err(ClientError::NotFound(_)) => {
                Err(StatusStoreError::NotFound { id: id.clone() })
            }
            Err(e) => Err(StatusStoreError::Other {
                id: id.clone(),
                source: Box::new(e),
            }),
        }
    }

    async fn patch_status(
        &self,
        id: &EntityId,
        status: &Value,
        expected_revision: i64,
    ) -> Result<Entity, StatusStoreError> {
        match EntityClient::patch_status(self, id, status, expected_revision).await {
            Ok(e) => Ok(e),
            Err(ClientError::Conflict { .. }) => Err(StatusStoreError::Conflict { id: id.clone() }),
            Err(ClientError::NotFound(_)) => Err(StatusStoreError::NotFound { id: id.clone() }),
            Err(e) => Err(StatusStoreError::Other {
                id: id.clone(),
                source: Box::new(e),
            }),
        }
    }
}

/// Why a status write gave up.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Every attempt met a concurrent change.
    #[error("status of {id} still conflicted after {attempts} attempts")]
    Conflicts {
        /// The entity concerned.
        id: EntityId,
        /// Attempts made.
        attempts: u32,
    },
    /// The store failed otherwise.
    #[error("writing status failed")]
    Store(#[from] StatusStoreError),
}

/// Writes statuses through the [`Executor`] (so dry-run records instead of writing) and
/// remembers the resulting revisions in the [`WriteTracker`].
pub struct StatusWriter<S> {
    store: Arc<S>,
    tracker: Arc<WriteTracker>,
    executor: Executor,
    max_attempts: u32,
}

impl<S> std::fmt::Debug for StatusWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<S> Clone for StatusWriter<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            tracker: self.tracker.clone(),
            executor: self.executor.clone(),
            max_attempts: self.max_attempts,
        }
    }
}

impl<S: StatusStore> StatusWriter<S> {
    /// A writer making at most 5 attempts per write.
    pub fn new(store: Arc<S>, tracker: Arc<WriteTracker>, executor: Executor) -> Self {
        Self {
            store,
            tracker,
            executor,
            max_attempts: 5,
        }
    }

    /// Changes the attempt bound (at least one).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Writes `compute(entity)` as the status of `entity`, expecting its revision. On a
    /// conflict, re-reads the entity and calls `compute` again on the fresh one. `compute`
    /// returning `None`, or a status equal to the current one, writes nothing. Returns the
    /// written entity, or `None` when nothing was written (unchanged, or dry-run).
    pub async fn write<F>(&self, entity: &Entity, compute: F) -> Result<Option<Entity>, StatusError>
    where
        F: Fn(&Entity) -> Option<Value> + Send + Sync,
    {
        let mut current = entity.clone();
        for attempt in 1..=self.max_attempts {
            let Some(status) = compute(&current) else {
                return Ok(None);
            };
            if status == current.status {
                return Ok(None);
            }
            let action = PlannedAction::new(
                Verb::Update,
                format!("{}/status", current.id),
                "status changed",
            );
            let store = self.store.clone();
            let write = store.patch_status(&current.id, &status, current.revision);
            match self.executor.perform(action, write).await {
                Ok(Some(written)) => {
                    self.tracker.record(written.revision);
                    return Ok(Some(written));
                }
                Ok(None) => return Ok(None),
                Err(StatusStoreError::Conflict { .. }) => {
                    tracing::debug!(id = %current.id, attempt, "status conflict; re-reading");
                    current = self.store.get(&current.id).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StatusError::Conflicts {
            id: current.id,
            attempts: self.max_attempts,
        })
    }
}
