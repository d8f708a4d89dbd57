//! `RedbStore`: the embedded entity store, one crash-safe redb file with history and compaction.

mod feed;
mod group;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ::redb::{Database, ReadableDatabase};
use async_trait::async_trait;
use converge_watch::{Entity, EntityId, Kind};
use serde_json::Value;
use tokio::sync::broadcast;

use super::{EventStream, Listing, PutOp, Store, StoreError, StoreEvent};
use group::{WriteOutcome, WriteQueue, WriteRequest};

/// How many live events a watcher may fall behind before it re-reads them from history.
const BROADCAST_CAPACITY: usize = 256;

/// The default number of revisions of history kept for watches.
pub const DEFAULT_HISTORY_LIMIT: u64 = 10_000;

/// A [`Store`] in one redb file. Every write is durable before it is answered; the revision
/// counter, entities and history survive a crash or a reopen. Concurrent writes are group
/// committed: whatever queued while the previous transaction committed is applied in order
/// in one transaction (one fsync), each request still all-or-nothing on its own. History older than the last
/// `history_limit` revisions is dropped a little after each write. Each changed entity gets
/// its own revision, even within a batch.
pub struct RedbStore {
    shared: Arc<Shared>,
}

/// What the store and its watch feeds share.
pub(crate) struct Shared {
    /// `None` once closed.
    db: RwLock<Option<Database>>,
    /// Serializes writes so live events are published in revision order. Lock poisoning is
    /// ignored: none of these locks guards an invariant a panic could break.
    writer: Mutex<()>,
    /// Write requests waiting for the writer.
    queue: WriteQueue,
    /// Live events; `None` once closed, which ends every watch.
    events: Mutex<Option<broadcast::Sender<Arc<StoreEvent>>>>,
    history_limit: u64,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, keeping `history_limit` revisions of history
    /// (at least 1). Fails with `Unavailable` if the file cannot be opened, for instance
    /// because another process holds it, or `Corrupt` if its metadata cannot be read.
    pub async fn open(path: impl AsRef<Path>, history_limit: u64) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_path = path.clone();
        let db = tokio::task::spawn_blocking(move || -> Result<Database, StoreError> {
            if let Some(parent) = open_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| unavailable(format!("cannot create {}", parent.display()), e))?;
            }
            let db = Database::create(&open_path)
                .map_err(|e| unavailable(format!("cannot open {}", open_path.display()), e))?;
            tables::init(&db)?;
            Ok(db)
        })
        .await
        .map_err(|e| unavailable("store task failed", e))??;
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        tracing::info!(path = %path.display(), history_limit, "opened redb store");
        Ok(Self {
            shared: Arc::new(Shared {
                db: RwLock::new(Some(db)),
                writer: Mutex::new(()),
                queue: WriteQueue::default(),
                events: Mutex::new(Some(sender)),
                history_limit: history_limit.max(1),
                path,
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

/// Builds an `Unavailable` error with context from any underlying error.
pub(crate) fn unavailable(
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    let message = message.into();
    StoreError::Unavailable {
        message: format!("{message}: {source}"),
        source: Some(Box::new(source)),
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable {
        message: "the store is closed".into(),
        source: None,
    }
}

impl Shared {
    /// Runs `f` with the open database; fails with `Unavailable` once closed.
    pub(crate) fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = guard.as_ref().ok_or_else(closed)?;
        f(db)
    }

    /// Subscribes to live events; fails once closed.
    pub(crate) fn subscribe(&self) -> Result<broadcast::Receiver<Arc<StoreEvent>>, StoreError> {
        let guard = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .as_ref()
            .map(broadcast::Sender::subscribe)
            .ok_or_else(closed)
    }

    /// Current revision and the highest compacted one, read consistently.
    pub(crate) fn revisions(&self) -> Result<(i64, i64), StoreError> {
        self.with_db(|db| {
            let txn = db
                .begin_read()
                .map_err(|e| unavailable("cannot begin a read", e))?;
            tables::read_revisions(&txn)
        })
    }
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .map_err(|e| unavailable("store task failed", e))?
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, id: &EntityId) -> Result<Option<Entity>, StoreError> {
        let key = id.to_string();
        blocking(&self.shared, move |s| {
            s.with_db(|db| {
                let txn = db
                    .begin_read()
                    .map_err(|e| unavailable("cannot begin a read", e))?;
                tables::read_entity(&txn, &key)
            })
        })
        .await
    }

    async fn list(&self, kind: Option<Kind>) -> Result<Listing, StoreError> {
        blocking(&self.shared, move |s| {
            s.with_db(|db| {
                let txn = db
                    .begin_read()
                    .map_err(|e| unavailable("cannot begin a read", e))?;
                let (revision, _) = tables::read_revisions(&txn)?;
                let entities = tables::read_entities(&txn, kind)?;
                Ok(Listing { entities, revision })
            })
        })
        .await
    }

    async fn put(&self, ops: Vec<PutOp>) -> Result<Vec<Entity>, StoreError> {
        match write(&self.shared, WriteRequest::Put(ops)).await? {
            WriteOutcome::Put(entities) => Ok(entities),
            _ => Err(mismatched()),
        }
    }

    async fn patch_status(
        &self,
        id: &EntityId,
        status: Value,
        expected_revision: i64,
    ) -> Result<Entity, StoreError> {
        let request = WriteRequest::PatchStatus {
            key: id.to_string(),
            status,
            expected_revision,
        };
        match write(&self.shared, request).await? {
            WriteOutcome::Patched(entity) => Ok(entity),
            _ => Err(mismatched()),
        }
    }

    async fn delete(
        &self,
        id: &EntityId,
        expected_revision: Option<i64>,
    ) -> Result<(Entity, i64), StoreError> {
        let request = WriteRequest::Delete {
            key: id.to_string(),
            expected_revision,
        };
        match write(&self.shared, request).await? {
            WriteOutcome::Deleted(prev, revision) => Ok((prev, revision)),
            _ => Err(mismatched()),
        }
    }

    async fn watch(
        &self,
        kind: Option<Kind>,
        from_revision: i64,
    ) -> Result<EventStream, StoreError> {
        feed::watch(&self.shared, kind, from_revision).await
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        blocking(&self.shared, |s| s.revisions().map(|(current, _)| current)).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Ending the broadcast ends every live watch.
        self.shared
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        blocking(&self.shared, |s| {
            // Waits for in-flight operations, which hold the read lock.
            let db = s.db.write().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(db) = db {
                db.close()
                    .map_err(|e| unavailable("cannot close the store", e))?;
                tracing::info!(path = %s.path.display(), "closed redb store");
            }
            Ok(())
        })
        .await
    }
}

/// Queues one write request, makes sure a writer serves it (this call's own, or one that
/// takes it along in its group) and waits for its answer.
async fn write(shared: &Arc<Shared>, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
    let answer = shared.queue.push(request);
    blocking(shared, |s| {
        s.write_queued();
        Ok(())
    })
    .await?;
    answer
        .await
        .map_err(|e| unavailable("the writer dropped a request", e))?
}

/// The error for an answer of the wrong shape, which the writer never gives.
fn mismatched() -> StoreError {
    StoreError::Unavailable {
        message: "the writer answered a different kind of request".into(),
        source: None,
    }
}
