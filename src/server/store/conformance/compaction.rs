//! History: compaction answers `Compacted` with a revision to resume from, and a reopen keeps everything.

use std::future::Future;
use std::sync::Arc;

use converge_watch::Kind;
use futures::StreamExt;
use serde_json::json;

use super::super::{Store, StoreError};
use super::{Check, EVENT_TIMEOUT, Outcome, spec, unique};

/// After more writes than the store keeps history for, a watch from revision 1 answers
/// `Compacted` naming a revision it can watch from, and watching from there works.
pub async fn compaction_answers_compacted(store: &dyn Store, history_limit: u64) -> Outcome {
    let writes = history_limit as u32 * 3 + 3;
    compaction_answers_compacted_when(store, writes, |_| async { Ok(()) }).await
}

/// The same check for a store that compacts only when told to (etcd leaves compaction to
/// its operator): after `writes` writes, `compact_now(current revision)` compacts history.
pub async fn compaction_answers_compacted_when<F, Fut>(
    store: &dyn Store,
    writes: u32,
    compact_now: F,
) -> Outcome
where
    F: FnOnce(i64) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let c = Check("compaction_answers_compacted");
    let a = unique(Kind::Sandbox, "compact")?;
    for version in 0..writes {
        c.put(store, &a, spec(version), None).await?;
    }
    let current = c.call("revision", store.revision().await)?;
    c.call("compact now", compact_now(current).await)?;
    let compact_revision = match store.watch(None, 1).await {
        Err(StoreError::Compacted {
            compact_revision, ..
        }) => compact_revision,
        Ok(mut events) => match tokio::time::timeout(EVENT_TIMEOUT, events.next()).await {
            Ok(Some(Err(StoreError::Compacted {
                compact_revision, ..
            }))) => compact_revision,
            other => return Err(c.fail(format!("watch from 1 after compaction gave {other:?}"))),
        },
        Err(e) => return Err(c.fail(format!("watch from 1 failed with {e}, wanted Compacted"))),
    };
    c.ensure(compact_revision > 1 && compact_revision <= current, || {
        format!("compact_revision {compact_revision} outside 2..={current}")
    })?;
    let mut events = c.call("watch", store.watch(None, compact_revision).await)?;
    let first = c.next(&mut events).await?.revision();
    c.ensure(first == compact_revision, || {
        format!("watch from {compact_revision} began at {first}")
    })
}

/// Closing and reopening keeps entities, statuses, the revision counter and history.
pub async fn reopen_keeps_data_and_revision<F, Fut>(open: F) -> Outcome
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Store>, StoreError>>,
{
    let c = Check("reopen_keeps_data_and_revision");
    let store = c.call("open", open().await)?;
    let a = unique(Kind::Sandbox, "reopen")?;
    let b = unique(Kind::Sandbox, "reopen")?;
    let r1 = c.put(store.as_ref(), &a, spec(1), None).await?;
    let patched = c
        .patch_status(store.as_ref(), &a, json!({"phase": "running"}), r1)
        .await?;
    c.put(store.as_ref(), &b, spec(1), None).await?;
    let (_, deleted_at) = c.call("delete", store.delete(&b, None).await)?;
    c.call("close", store.close().await)?;
    drop(store);

    let store = c.call("reopen", open().await)?;
    let now = c.call("revision", store.revision().await)?;
    c.ensure(now == deleted_at, || {
        format!("revision after reopen is {now}, wanted {deleted_at}")
    })?;
    let kept = c.call("get", store.get(&a).await)?;
    c.ensure(kept.as_ref() == Some(&patched), || {
        format!("after reopen {a} is {kept:?}")
    })?;
    c.ensure(c.call("get", store.get(&b).await)?.is_none(), || {
        "a deleted entity came back".into()
    })?;
    let mut events = c.call("watch", store.watch(None, r1).await)?;
    let first = c.next(&mut events).await?.revision();
    c.ensure(first == r1, || {
        format!("history after reopen began at {first}, wanted {r1}")
    })?;
    let next = c.put(store.as_ref(), &a, spec(2), None).await?;
    c.ensure(next > deleted_at, || {
        format!("revision {next} reused after reopen")
    })?;
    c.call("close", store.close().await)
}
