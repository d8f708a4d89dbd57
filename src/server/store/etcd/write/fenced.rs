//! The fenced delete of the etcd store: one `Txn` that deletes an entity only while the
//! leader key still has the fencing create revision (and the entity its expected revision).

use converge_watch::{Entity, EntityId};
use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};

use super::{Conn, WRITE_ATTEMPTS, contended, race_backoff, read_expected, txn};
use crate::server::store::etcd::header_revision;
use crate::server::store::{Fence, StoreError};

/// Deletes `id` if the leader key of `fence` still has create revision `fence.fencing`
/// and (when given) the entity is at `expected_revision`; both compares and the delete are
/// one transaction, so a writer whose term ended can never delete. A failed fence compare
/// answers `FenceLost`; a failed entity compare `Conflict` (or `NotFound`), as for
/// [`super::delete`]. An unconditional delete that races another write re-reads and
/// retries, as `delete` does.
pub(in crate::server::store::etcd) async fn delete_fenced(
    conn: &Conn,
    id: &EntityId,
    expected_revision: Option<i64>,
    fence: &Fence,
) -> Result<(Entity, i64), StoreError> {
    let key = conn.keys.entity(id);
    let mut backoff = race_backoff();
    for attempt in 1..=WRITE_ATTEMPTS {
        let current = read_expected(conn, &key, id, expected_revision).await?;
        let guarded = Txn::new()
            .when([
                Compare::create_revision(fence.key.as_str(), CompareOp::Equal, fence.fencing),
                Compare::mod_revision(key.as_str(), CompareOp::Equal, current.revision),
            ])
            .and_then([TxnOp::delete(key.as_str(), None)])
            .or_else([
                TxnOp::get(fence.key.as_str(), None),
                TxnOp::get(key.as_str(), None),
            ]);
        let resp = txn(conn, guarded, "fenced delete").await?;
        if resp.succeeded() {
            return Ok((current, header_revision(resp.header())?));
        }
        let mut reads = resp.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        let leader = reads.next().flatten();
        let entity = reads.next().flatten();
        if leader.as_ref().map(KeyValue::create_revision) != Some(fence.fencing) {
            return Err(StoreError::FenceLost {
                key: fence.key.clone(),
                fencing: fence.fencing,
            });
        }
        let Some(now) = entity.as_ref().map(KeyValue::mod_revision) else {
            return Err(StoreError::NotFound(id.to_string()));
        };
        match expected_revision {
            Some(expected) => {
                return Err(StoreError::Conflict {
                    id: id.to_string(),
                    expected,
                    current: now,
                });
            }
            None => {
                tracing::debug!(
                    attempt,
                    "fenced delete raced a concurrent write; reading again"
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    Err(contended("fenced delete"))
}
