//! Group commit for `RedbStore`: queued write requests are applied in order inside one
//! durable redb transaction, each checked against the state the earlier ones left.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use ::redb::Durability;
use chrono::Utc;
use converge_watch::Entity;
use serde_json::Value;
use tokio::sync::oneshot;

use super::tables::WriteTx;
use super::{Shared, unavailable};
use crate::server::store::{PutOp, StoreError, StoreEvent};

/// Most requests applied in one redb transaction.
pub(super) const MAX_GROUP: usize = 256;

/// One write request as a caller queued it.
pub(super) enum WriteRequest {
    /// A put batch.
    Put(Vec<PutOp>),
    /// A status replacement at an expected revision.
    PatchStatus {
        key: String,
        status: Value,
        expected_revision: i64,
    },
    /// A deletion, optionally at an expected revision.
    Delete {
        key: String,
        expected_revision: Option<i64>,
    },
}

/// What a successful write request answers.
pub(super) enum WriteOutcome {
    /// The entities of a put batch, in op order.
    Put(Vec<Entity>),
    /// The entity after a status patch.
    Patched(Entity),
    /// The last state of a deleted entity and the revision of the deletion.
    Deleted(Entity, i64),
}

/// A queued request with the channel its answer goes to.
pub(super) struct Pending {
    request: WriteRequest,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// Requests waiting for a writer, in arrival order.
#[derive(Default)]
pub(super) struct WriteQueue {
    pending: Mutex<Vec<Pending>>,
}

impl WriteQueue {
    /// Queues `request`; its answer arrives on the returned channel once a writer has
    /// committed (or failed) the group it belongs to.
    pub(super) fn push(
        &self,
        request: WriteRequest,
    ) -> oneshot::Receiver<Result<WriteOutcome, StoreError>> {
        let (reply, answer) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Pending { request, reply });
        answer
    }

    /// Takes up to [`MAX_GROUP`] of the oldest queued requests.
    fn take_group(&self) -> Vec<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let n = pending.len().min(MAX_GROUP);
        pending.drain(..n).collect()
    }
}

impl Shared {
    /// Becomes the writer: waits for the writer lock, then applies whatever is queued (up to
    /// [`MAX_GROUP`] requests; possibly nothing, if another writer already took it) in one
    /// durable transaction, answers every request and publishes the events in revision
    /// order. Every caller queues before calling this, so every request is served by its own
    /// call or an earlier one; no request waits for a timer.
    pub(super) fn write_queued(&self) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let group = self.queue.take_group();
        if group.is_empty() {
            return;
        }
        let (replies, requests): (Vec<_>, Vec<_>) =
            group.into_iter().map(|p| (p.reply, p.request)).unzip();
        match self.commit_group(requests) {
            Ok((outcomes, events)) => {
                self.publish(events);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // A caller that gave up no longer needs its answer.
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = replies.len(), "group commit failed");
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Unavailable {
                        message: message.clone(),
                        source: None,
                    }));
                }
            }
        }
    }

    /// Applies `requests` in order in one transaction and commits it durably if anything
    /// changed. A request that fails its checks leaves no trace and gets its own error; a
    /// failure of the store itself fails the whole group and writes nothing.
    #[allow(clippy::type_complexity)]
    fn commit_group(
        &self,
        requests: Vec<WriteRequest>,
    ) -> Result<(Vec<Result<WriteOutcome, StoreError>>, Vec<StoreEvent>), StoreError> {
        self.with_db(|db| {
            let mut txn = db
                .begin_write()
                .map_err(|e| unavailable("cannot begin a write", e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| unavailable("cannot set durability", e))?;
            let mut tx = WriteTx::new(&txn)?;
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                match plan(&tx, request) {
                    Ok((outcome, events)) => {
                        for event in events {
                            tx.record(event)?;
                        }
                        outcomes.push(Ok(outcome));
                    }
                    Err(e @ (StoreError::Unavailable { .. } | StoreError::Corrupt { .. })) => {
                        return Err(e);
                    }
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            let events = tx.finish(self.history_limit)?;
            if events.is_empty() {
                txn.abort()
                    .map_err(|e| unavailable("cannot abort a write", e))?;
            } else {
                txn.commit()
                    .map_err(|e| unavailable("cannot commit a write", e))?;
            }
            Ok((outcomes, events))
        })
    }

    /// Sends committed events to live watchers, in revision order.
    fn publish(&self, events: Vec<StoreEvent>) {
        let guard = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = guard.as_ref() {
            for event in events {
                // No receivers is fine: nobody is watching.
                let _ = sender.send(std::sync::Arc::new(event));
            }
        }
    }
}

/// Works out what one request changes, against the state staged in `tx` so far, without
/// writing anything: on `Err` the request leaves no trace. Revisions continue from `tx`'s.
fn plan(
    tx: &WriteTx<'_>,
    request: WriteRequest,
) -> Result<(WriteOutcome, Vec<StoreEvent>), StoreError> {
    let mut revision = tx.revision();
    let mut next_revision = || {
        revision += 1;
        revision
    };
    match request {
        WriteRequest::Put(ops) => {
            let now = Utc::now();
            // Entities as changed by earlier ops of this batch.
            let mut staged: HashMap<String, Entity> = HashMap::new();
            let mut events = Vec::new();
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                let key = op.id.to_string();
                let current = match staged.get(&key) {
                    Some(entity) => Some(entity.clone()),
                    None => tx.entity(&key)?,
                };
                check_expected(&key, op.expected_revision, current.as_ref())?;
                let entity = match current {
                    Some(prev) if prev.spec == op.spec => prev,
                    Some(prev) => {
                        let mut next = prev.clone();
                        next.spec = op.spec;
                        next.revision = next_revision();
                        next.updated_at = now;
                        events.push(StoreEvent::Put {
                            entity: next.clone(),
                            prev: Some(prev),
                        });
                        next
                    }
                    None => {
                        let mut next = Entity::new(op.id, op.spec);
                        next.revision = next_revision();
                        next.create_revision = next.revision;
                        next.created_at = now;
                        next.updated_at = now;
                        events.push(StoreEvent::Put {
                            entity: next.clone(),
                            prev: None,
                        });
                        next
                    }
                };
                staged.insert(key, entity.clone());
                out.push(entity);
            }
            Ok((WriteOutcome::Put(out), events))
        }
        WriteRequest::PatchStatus {
            key,
            status,
            expected_revision,
        } => {
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
            next.revision = next_revision();
            next.updated_at = Utc::now();
            let event = StoreEvent::Put {
                entity: next.clone(),
                prev: Some(prev),
            };
            Ok((WriteOutcome::Patched(next), vec![event]))
        }
        WriteRequest::Delete {
            key,
            expected_revision,
        } => {
            let prev = tx
                .entity(&key)?
                .ok_or_else(|| StoreError::NotFound(key.clone()))?;
            check_expected(&key, expected_revision, Some(&prev))?;
            let revision = next_revision();
            let event = StoreEvent::Delete {
                prev: prev.clone(),
                revision,
            };
            Ok((WriteOutcome::Deleted(prev, revision), vec![event]))
        }
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
