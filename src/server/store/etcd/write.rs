//! Writes of the etcd store: put batches, status patches and deletes, each one etcd
//! transaction guarded by compares on the keys' `mod_revision`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use converge_watch::{Backoff, BackoffConfig, Entity, EntityId, Jitter};
use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};
use serde_json::Value;

use super::{Conn, MAX_TXN_OPS, READ_RETRY, codec, header_revision, transient, unavailable};
use crate::server::store::{PutOp, StoreError};

/// How often an unconditional write is retried when a concurrent write changed what it
/// had read between its read and its transaction.
const WRITE_ATTEMPTS: usize = 10;

/// One distinct entity of a put batch.
struct Slot {
    key: String,
    /// What the read found.
    read: Option<Entity>,
    /// The state after the ops applied so far.
    current: Option<Entity>,
    /// Whether an op of this batch changed it.
    changed: bool,
}

/// Applies a put batch as one transaction (see [`crate::server::store::Store::put`]).
#[tracing::instrument(level = "debug", skip_all, fields(ops = ops.len(), first = ?ops.first().map(|op| op.id.to_string())))]
pub(super) async fn put(conn: &Conn, ops: Vec<PutOp>) -> Result<Vec<Entity>, StoreError> {
    let mut distinct: Vec<&EntityId> = Vec::new();
    for op in &ops {
        if !distinct.contains(&&op.id) {
            distinct.push(&op.id);
        }
    }
    if distinct.len() > MAX_TXN_OPS {
        return Err(StoreError::Unavailable {
            message: format!(
                "a batch of {} entities exceeds etcd's limit of {MAX_TXN_OPS} operations in \
                 one transaction; split it into several batches",
                distinct.len()
            ),
            source: None,
        });
    }
    let keys: Vec<String> = distinct.iter().map(|id| conn.keys.entity(id)).collect();
    // Re-sending an unconditional batch after an ambiguous failure is safe: if the first
    // attempt landed, the re-read finds the same specs and the retry is a no-op.
    let idempotent = ops.iter().all(|op| op.expected_revision.is_none());
    let retry_until = Instant::now() + READ_RETRY;
    let mut backoff = race_backoff();
    let mut attempt = 0;
    loop {
        let read = read_many(conn, &keys).await?;
        let (mut slots, outputs) = plan(&distinct, &keys, read, &ops)?;
        if !slots.iter().any(|s| s.changed) {
            tracing::debug!(ops = ops.len(), "put batch changes nothing");
            return Ok(outputs
                .iter()
                .filter_map(|&i| slots[i].current.clone())
                .collect());
        }
        let compares: Vec<Compare> = slots
            .iter()
            .map(|s| {
                let rev = s.read.as_ref().map_or(0, |e| e.revision);
                Compare::mod_revision(s.key.as_str(), CompareOp::Equal, rev)
            })
            .collect();
        let mut puts = Vec::new();
        for slot in slots.iter().filter(|s| s.changed) {
            if let Some(entity) = &slot.current {
                puts.push(TxnOp::put(slot.key.as_str(), codec::encode(entity)?, None));
            }
        }
        let sent = conn
            .kv()?
            .txn(Txn::new().when(compares).and_then(puts))
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) if idempotent && transient(&e) && Instant::now() < retry_until => {
                tracing::debug!(error = %e, "unconditional put batch failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(e) => return Err(unavailable("put transaction failed", e)),
        };
        if !resp.succeeded() {
            attempt += 1;
            if attempt >= WRITE_ATTEMPTS {
                return Err(contended("put batch"));
            }
            tracing::debug!(attempt, "put batch raced a concurrent write; reading again");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        let revision = header_revision(resp.header())?;
        for slot in slots.iter_mut().filter(|s| s.changed) {
            if let Some(entity) = slot.current.as_mut() {
                entity.revision = revision;
                if slot.read.is_none() {
                    entity.create_revision = revision;
                }
            }
        }
        tracing::debug!(revision, ops = ops.len(), "stored put batch");
        return Ok(outputs
            .iter()
            .filter_map(|&i| slots[i].current.clone())
            .collect());
    }
}

/// Applies `ops` in order to what was read: checks expectations (an entity changed earlier
/// in the same batch no longer has any revision a caller could expect), skips unchanged
/// specs. Returns the slots and, per op, the index of its slot.
fn plan(
    ids: &[&EntityId],
    keys: &[String],
    read: Vec<Option<Entity>>,
    ops: &[PutOp],
) -> Result<(Vec<Slot>, Vec<usize>), StoreError> {
    let mut slots: Vec<Slot> = keys
        .iter()
        .zip(read)
        .map(|(key, read)| Slot {
            key: key.clone(),
            current: read.clone(),
            read,
            changed: false,
        })
        .collect();
    let index: HashMap<&EntityId, usize> = ids.iter().copied().zip(0..).collect();
    let now = Utc::now();
    let mut outputs = Vec::with_capacity(ops.len());
    for op in ops {
        let id = op.id.to_string();
        let i = *index.get(&op.id).ok_or_else(|| StoreError::Unavailable {
            message: format!("internal: {id} missing from its own batch"),
            source: None,
        })?;
        let slot = &mut slots[i];
        let current_revision = slot.current.as_ref().map_or(0, |e| e.revision);
        if let Some(expected) = op.expected_revision
            && (slot.changed || expected != current_revision)
        {
            return Err(StoreError::Conflict {
                id,
                expected,
                current: current_revision,
            });
        }
        let next = match slot.current.take() {
            Some(cur) if cur.spec == op.spec => cur,
            Some(mut cur) => {
                cur.spec = op.spec.clone();
                cur.updated_at = now;
                slot.changed = true;
                cur
            }
            None => {
                let mut created = Entity::new(op.id.clone(), op.spec.clone());
                created.created_at = now;
                created.updated_at = now;
                slot.changed = true;
                created
            }
        };
        slot.current = Some(next);
        outputs.push(i);
    }
    Ok((slots, outputs))
}

/// Replaces the status if the entity is at `expected_revision`.
#[tracing::instrument(level = "debug", skip_all, fields(id = %id, expected_revision))]
pub(super) async fn patch_status(
    conn: &Conn,
    id: &EntityId,
    status: Value,
    expected_revision: i64,
) -> Result<Entity, StoreError> {
    let key = conn.keys.entity(id);
    let mut next = read_expected(conn, &key, id, Some(expected_revision)).await?;
    next.status = status;
    next.updated_at = Utc::now();
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            expected_revision,
        )])
        .and_then([TxnOp::put(key.as_str(), codec::encode(&next)?, None)])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let resp = txn_checked(conn, txn, id, expected_revision).await?;
    next.revision = header_revision(resp.header())?;
    Ok(next)
}

/// Deletes the entity (only at `expected_revision` if given); returns its last state and
/// the revision of the deletion.
#[tracing::instrument(level = "debug", skip_all, fields(id = %id))]
pub(super) async fn delete(
    conn: &Conn,
    id: &EntityId,
    expected_revision: Option<i64>,
) -> Result<(Entity, i64), StoreError> {
    let key = conn.keys.entity(id);
    let mut backoff = race_backoff();
    for attempt in 1..=WRITE_ATTEMPTS {
        let current = read_expected(conn, &key, id, expected_revision).await?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                current.revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = match expected_revision {
            Some(expected) => txn_checked(conn, txn, id, expected).await?,
            None => {
                let resp = self::txn(conn, txn, "delete").await?;
                if !resp.succeeded() {
                    tracing::debug!(attempt, "delete raced a concurrent write; reading again");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                resp
            }
        };
        return Ok((current, header_revision(resp.header())?));
    }
    Err(contended("delete"))
}

/// Runs a conditional transaction whose failure branch reads `id`'s key, and turns a
/// failed compare into `NotFound` or `Conflict` naming the revision etcd has now.
async fn txn_checked(
    conn: &Conn,
    txn: Txn,
    id: &EntityId,
    expected: i64,
) -> Result<TxnResponse, StoreError> {
    let resp = self::txn(conn, txn, "conditional write").await?;
    if resp.succeeded() {
        return Ok(resp);
    }
    let now = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => Some(get.kvs().first().map(KeyValue::mod_revision)),
        _ => None,
    });
    match now.flatten() {
        None => Err(StoreError::NotFound(id.to_string())),
        Some(current) => Err(StoreError::Conflict {
            id: id.to_string(),
            expected,
            current,
        }),
    }
}

fn conflict(id: &EntityId, expected: i64, current: Option<&Entity>) -> StoreError {
    StoreError::Conflict {
        id: id.to_string(),
        expected,
        current: current.map_or(0, |e| e.revision),
    }
}

/// Spreads retries of writers racing for the same entities.
fn race_backoff() -> Backoff {
    Backoff::new(BackoffConfig {
        base: Duration::from_millis(5),
        max: Duration::from_millis(200),
        jitter: Jitter::Full,
        reset_after: Duration::from_secs(1),
    })
}

fn contended(what: &str) -> StoreError {
    StoreError::Unavailable {
        message: format!(
            "{what} lost {WRITE_ATTEMPTS} races against concurrent writes to the same entities; \
             try again"
        ),
        source: None,
    }
}

async fn txn(conn: &Conn, txn: Txn, what: &str) -> Result<TxnResponse, StoreError> {
    conn.kv()?
        .txn(txn)
        .await
        .map_err(|e| unavailable(format!("{what} transaction failed"), e))
}

/// Reads the entity `id` stored at `key`: `NotFound` when there is none, `Conflict` when
/// `expected_revision` is given and the entity is at another revision.
async fn read_expected(
    conn: &Conn,
    key: &str,
    id: &EntityId,
    expected_revision: Option<i64>,
) -> Result<Entity, StoreError> {
    let current = read_one(conn, key)
        .await?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    match expected_revision {
        Some(expected) if expected != current.revision => {
            Err(conflict(id, expected, Some(&current)))
        }
        _ => Ok(current),
    }
}

async fn read_one(conn: &Conn, key: &str) -> Result<Option<Entity>, StoreError> {
    let resp = conn
        .read(&format!("cannot read {key}"), |mut kv| async move {
            kv.get(key, None).await
        })
        .await?;
    resp.kvs()
        .first()
        .map(|kv| codec::decode(&conn.keys, kv))
        .transpose()
}

/// Reads several keys at one revision (one read-only transaction), in the order given.
async fn read_many(conn: &Conn, keys: &[String]) -> Result<Vec<Option<Entity>>, StoreError> {
    let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
    let read = Txn::new().and_then(gets);
    let resp = conn
        .read("read transaction failed", |mut kv| {
            let read = read.clone();
            async move { kv.txn(read).await }
        })
        .await?;
    let ops = resp.op_responses();
    if ops.len() != keys.len() {
        return Err(StoreError::Unavailable {
            message: format!("etcd answered {} reads for {} keys", ops.len(), keys.len()),
            source: None,
        });
    }
    ops.iter()
        .map(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| codec::decode(&conn.keys, kv))
                .transpose(),
            _ => Err(StoreError::Unavailable {
                message: "etcd answered a read with something else".into(),
                source: None,
            }),
        })
        .collect()
}

mod fenced;
pub(super) use fenced::delete_fenced;

#[cfg(test)]
mod tests;
