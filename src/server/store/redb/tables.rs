//! The redb tables behind `RedbStore` and the record formats stored in them.

use ::redb::{Database, ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use converge_watch::{Entity, Kind};
use serde::{Deserialize, Serialize};

use super::unavailable;
use crate::server::store::{StoreError, StoreEvent};

/// Entities by id (`kind/name`), as the contract's JSON.
const ENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");
/// One change per revision, as a [`HistoryRecord`] in JSON.
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
/// Counters: [`REVISION`] and [`COMPACTED`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The store-wide revision of the last write.
const REVISION: &str = "revision";
/// Every history record at or below this revision has been dropped.
const COMPACTED: &str = "compacted";

/// Most history records dropped per write beyond what the write itself added, so that
/// compaction catches up gradually without making any one write slow.
const COMPACTION_STEP: u64 = 256;

/// Most history records read per read transaction when replaying.
pub(crate) const REPLAY_CHUNK: usize = 512;

/// A change as stored in the history table.
#[derive(Serialize, Deserialize)]
struct HistoryRecord {
    revision: i64,
    /// The new state; absent for a deletion.
    entity: Option<Entity>,
    /// The state before; absent for a creation.
    prev: Option<Entity>,
}

impl HistoryRecord {
    fn from_event(event: &StoreEvent) -> Self {
        match event {
            StoreEvent::Put { entity, prev } => Self {
                revision: entity.revision,
                entity: Some(entity.clone()),
                prev: prev.clone(),
            },
            StoreEvent::Delete { prev, revision } => Self {
                revision: *revision,
                entity: None,
                prev: Some(prev.clone()),
            },
        }
    }

    fn into_event(self, key: u64) -> Result<StoreEvent, StoreError> {
        match (self.entity, self.prev) {
            (Some(entity), prev) => Ok(StoreEvent::Put { entity, prev }),
            (None, Some(prev)) => Ok(StoreEvent::Delete {
                prev,
                revision: self.revision,
            }),
            (None, None) => Err(StoreError::Corrupt {
                key: format!("history/{key}"),
                message: "record has neither a new nor a previous state".into(),
            }),
        }
    }
}

fn to_u64(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

fn to_i64(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

fn decode_entity(key: &str, bytes: &[u8]) -> Result<Entity, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("entities/{key}"),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: key.into(),
        message: e.to_string(),
    })
}

/// Creates the tables of a new file; leaves an existing file's data alone.
pub(crate) fn init(db: &Database) -> Result<(), StoreError> {
    let txn = db
        .begin_write()
        .map_err(|e| unavailable("cannot begin a write", e))?;
    {
        txn.open_table(ENTITIES)
            .map_err(|e| unavailable("cannot open entities", e))?;
        txn.open_table(HISTORY)
            .map_err(|e| unavailable("cannot open history", e))?;
        txn.open_table(META)
            .map_err(|e| unavailable("cannot open meta", e))?;
    }
    txn.commit().map_err(|e| unavailable("cannot commit", e))
}

/// `(current revision, highest compacted revision)` as of `txn`.
pub(crate) fn read_revisions(txn: &ReadTransaction) -> Result<(i64, i64), StoreError> {
    let meta = txn
        .open_table(META)
        .map_err(|e| unavailable("cannot open meta", e))?;
    let read = |name: &str| -> Result<i64, StoreError> {
        let value = meta
            .get(name)
            .map_err(|e| unavailable("cannot read meta", e))?;
        Ok(value.map_or(0, |v| to_i64(v.value())))
    };
    Ok((read(REVISION)?, read(COMPACTED)?))
}

/// One entity as of `txn`.
pub(crate) fn read_entity(txn: &ReadTransaction, key: &str) -> Result<Option<Entity>, StoreError> {
    let table = txn
        .open_table(ENTITIES)
        .map_err(|e| unavailable("cannot open entities", e))?;
    let value = table
        .get(key)
        .map_err(|e| unavailable("cannot read an entity", e))?;
    value.map(|v| decode_entity(key, v.value())).transpose()
}

/// Every entity (of one kind, or all), ordered by id.
pub(crate) fn read_entities(
    txn: &ReadTransaction,
    kind: Option<Kind>,
) -> Result<Vec<Entity>, StoreError> {
    let table = txn
        .open_table(ENTITIES)
        .map_err(|e| unavailable("cannot open entities", e))?;
    let iter = match kind {
        // '0' is the character after '/', so this is every key starting with "kind/".
        Some(kind) => {
            let (start, end) = (format!("{kind}/"), format!("{kind}0"));
            table.range(start.as_str()..end.as_str())
        }
        None => table.iter(),
    }
    .map_err(|e| unavailable("cannot list entities", e))?;
    let mut out = Vec::new();
    for item in iter {
        let (key, value) = item.map_err(|e| unavailable("cannot list entities", e))?;
        out.push(decode_entity(key.value(), value.value())?);
    }
    Ok(out)
}

/// History records from revision `from` on, at most [`REPLAY_CHUNK`] of them, read at
/// one consistent point. Fails with `Compacted` if `from` is no longer kept.
pub(crate) fn read_history(
    txn: &ReadTransaction,
    from: i64,
) -> Result<Vec<StoreEvent>, StoreError> {
    let (_, compacted) = read_revisions(txn)?;
    if from <= compacted {
        return Err(StoreError::Compacted {
            requested: from,
            compact_revision: compacted + 1,
        });
    }
    let table = txn
        .open_table(HISTORY)
        .map_err(|e| unavailable("cannot open history", e))?;
    let iter = table
        .range(to_u64(from)..)
        .map_err(|e| unavailable("cannot read history", e))?;
    let mut out = Vec::new();
    for item in iter.take(REPLAY_CHUNK) {
        let (key, value) = item.map_err(|e| unavailable("cannot read history", e))?;
        let key = key.value();
        let record: HistoryRecord =
            serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                key: format!("history/{key}"),
                message: e.to_string(),
            })?;
        out.push(record.into_event(key)?);
    }
    Ok(out)
}

/// The tables of one write transaction, with the revision counter it advances.
pub(crate) struct WriteTx<'txn> {
    entities: Table<'txn, &'static str, &'static [u8]>,
    history: Table<'txn, u64, &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    revision: i64,
    events: Vec<StoreEvent>,
}

impl<'txn> WriteTx<'txn> {
    /// Opens the tables of `txn` and reads the current revision.
    pub(crate) fn new(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        let entities = txn
            .open_table(ENTITIES)
            .map_err(|e| unavailable("cannot open entities", e))?;
        let history = txn
            .open_table(HISTORY)
            .map_err(|e| unavailable("cannot open history", e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| unavailable("cannot open meta", e))?;
        let revision = meta
            .get(REVISION)
            .map_err(|e| unavailable("cannot read meta", e))?
            .map_or(0, |v| to_i64(v.value()));
        Ok(Self {
            entities,
            history,
            meta,
            revision,
            events: Vec::new(),
        })
    }

    /// The entity as staged so far in this transaction.
    pub(crate) fn entity(&self, key: &str) -> Result<Option<Entity>, StoreError> {
        let value = self
            .entities
            .get(key)
            .map_err(|e| unavailable("cannot read an entity", e))?;
        value.map(|v| decode_entity(key, v.value())).transpose()
    }

    /// The store-wide revision of the last change staged (or committed) so far.
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    /// Stages a change: updates the entities table, appends to history and advances the
    /// revision to the change's. Changes must be recorded in revision order.
    pub(crate) fn record(&mut self, event: StoreEvent) -> Result<(), StoreError> {
        let revision = event.revision();
        self.revision = self.revision.max(revision);
        match &event {
            StoreEvent::Put { entity, .. } => {
                let key = entity.id.to_string();
                let bytes = encode(&key, entity)?;
                self.entities
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(|e| unavailable("cannot write an entity", e))?;
            }
            StoreEvent::Delete { prev, .. } => {
                self.entities
                    .remove(prev.id.to_string().as_str())
                    .map_err(|e| unavailable("cannot delete an entity", e))?;
            }
        }
        let bytes = encode(
            &format!("history/{revision}"),
            &HistoryRecord::from_event(&event),
        )?;
        self.history
            .insert(to_u64(revision), bytes.as_slice())
            .map_err(|e| unavailable("cannot write history", e))?;
        self.events.push(event);
        Ok(())
    }

    /// Stores the new revision, drops a bounded amount of history older than the last
    /// `history_limit` revisions, and returns the staged events (empty: nothing changed).
    pub(crate) fn finish(mut self, history_limit: u64) -> Result<Vec<StoreEvent>, StoreError> {
        if self.events.is_empty() {
            return Ok(self.events);
        }
        let revision = to_u64(self.revision);
        self.meta
            .insert(REVISION, revision)
            .map_err(|e| unavailable("cannot write meta", e))?;
        let compacted = self
            .meta
            .get(COMPACTED)
            .map_err(|e| unavailable("cannot read meta", e))?
            .map_or(0, |v| v.value());
        let floor = revision.saturating_sub(history_limit);
        if floor > compacted {
            let step = COMPACTION_STEP + self.events.len() as u64;
            let upto = floor.min(compacted + step);
            self.history
                .retain_in((compacted + 1)..=upto, |_, _| false)
                .map_err(|e| unavailable("cannot compact history", e))?;
            self.meta
                .insert(COMPACTED, upto)
                .map_err(|e| unavailable("cannot write meta", e))?;
        }
        Ok(self.events)
    }
}
