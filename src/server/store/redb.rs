//! `RedbStore`: the embedded entity store, one crash-safe redb file with history and compaction.

mod feed;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ::redb::{Database, Durability, ReadableDatabase};
use async_trait::async_trait;
use chrono::Utc;
use converge_watch::{Entity, EntityId, Kind};
use serde_json::Value;
use tokio::sync::broadcast;

use super::{EventStream, Listing, PutOp, Store, StoreError, StoreEvent};
use tables::WriteTx;

/// How many live events a watcher may fall behind before it re-reads them from history.
const BROADCAST_CAPACITY: usize = 256;

/// The default number of revisions of history kept for watches.
pub const DEFAULT_HISTORY_LIMIT: u64 = 10_000;

/// A [`Store`] in one redb file. Every write is a durable redb transaction; the revision
/// counter, entities and history survive a crash or a reopen. History older than the last
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

    /// Runs one write transaction: `f` stages changes (recording their events) and the
    /// transaction commits durably only if `f` succeeds and changed something; then the
    /// events are published. On any error nothing is written.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let (out, events) = self.with_db(|db| {
            let mut txn = db
                .begin_write()
                .map_err(|e| unavailable("cannot begin a write", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| unavailable("cannot set durability", e))?;
            let mut tx = WriteTx::new(&txn)?;
            let out = f(&mut tx)?;
            let events = tx.finish(self.history_limit)?;
            if events.is_empty() {
                txn.abort()
                    .map_err(|e| unavailable("cannot abort a write", e))?;
            } else {
                txn.commit()
                    .map_err(|e| unavailable("cannot commit a write", e))?;
            }
            Ok((out, events))
        })?;
        let guard = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = guard.as_ref() {
            for event in events {
                // No receivers is fine: nobody is watching.
                let _ = sender.send(Arc::new(event));
            }
        }
        Ok(out)
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
        blocking(&self.shared, move |s| {
            s.write(|tx| {
                let now = Utc::now();
                let mut out = Vec::with_capacity(ops.len());
                for op in ops {
                    let key = op.id.to_string();
                    let current = tx.entity(&key)?;
                    check_expected(&key, op.expected_revision, current.as_ref())?;
                    let entity = match current {
                        Some(prev) if prev.spec == op.spec => prev,
                        Some(prev) => {
                            let mut next = prev.clone();
                            next.spec = op.spec;
                            next.revision = tx.next_revision();
                            next.updated_at = now;
                            tx.record(StoreEvent::Put {
                                entity: next.clone(),
                                prev: Some(prev),
                            })?;
                            next
                        }
                        None => {
                            let mut next = Entity::new(op.id, op.spec);
                            next.revision = tx.next_revision();
                            next.create_revision = next.revision;
                            next.created_at = now;
                            next.updated_at = now;
                            tx.record(StoreEvent::Put {
                                entity: next.clone(),
                                prev: None,
                            })?;
                            next
                        }
                    };
                    out.push(entity);
                }
                Ok(out)
            })
        })
        .await
    }

    async fn patch_status(
        &self,
        id: &EntityId,
        status: Value,
        expected_revision: i64,
    ) -> Result<Entity, StoreError> {
        let key = id.to_string();
        blocking(&self.shared, move |s| {
            s.write(|tx| {
                let prev = tx
                    .entity(&key)?
                    .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                if prev.revision != expected_revision {
                    return Err(StoreError::Conflict {
                        id: key,
                        expected: expected_revision,
                        current: prev.revision,
                    });
                }
                let mut next = prev.clone();
                next.status = status;
                next.revision = tx.next_revision();
                next.updated_at = Utc::now();
                tx.record(StoreEvent::Put {
                    entity: next.clone(),
                    prev: Some(prev),
                })?;
                Ok(next)
            })
        })
        .await
    }

    async fn delete(
        &self,
        id: &EntityId,
        expected_revision: Option<i64>,
    ) -> Result<(Entity, i64), StoreError> {
        let key = id.to_string();
        blocking(&self.shared, move |s| {
            s.write(|tx| {
                let prev = tx
                    .entity(&key)?
                    .ok_or_else(|| StoreError::NotFound(key.clone()))?;
                check_expected(&key, expected_revision, Some(&prev))?;
                let revision = tx.next_revision();
                tx.record(StoreEvent::Delete {
                    prev: prev.clone(),
                    revision,
                })?;
                Ok((prev, revision))
            })
        })
        .await
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

/// Checks an op's expected revision against the current state (`Some(0)`: must not exist).
fn check_expected(
    key: &str,
    expected: Option<i64>,
    current: Option<&Entity>,
) -> Result<(), StoreError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let current_revision = current.map_or(0, |e| e.revision);
    if expected == current_revision {
        return Ok(());
    }
    Err(StoreError::Conflict {
        id: key.to_string(),
        expected,
        current: current_revision,
    })
}
