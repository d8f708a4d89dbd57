//! The contract every [`Store`] must keep, as checks generic over the store, so the redb
//! store and any later one (etcd) run the very same tests. Each check wants a store with
//! nothing else writing to it, uses unique entity names, and reports the first violation.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use converge_watch::{EntityId, Kind};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{EventStream, PutOp, Store, StoreError, StoreEvent};

/// How long a check waits for a watch event before calling it missing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A broken promise of the store contract.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The store answered, but wrongly.
    #[error("{check}: {message}")]
    Violation {
        /// The check that failed.
        check: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A store call that should have succeeded failed.
    #[error("{check}: {call} failed")]
    Store {
        /// The check that failed.
        check: &'static str,
        /// The call.
        call: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

type Outcome = Result<(), ConformanceError>;

/// Context of one check, used to build its errors.
struct Check(&'static str);

impl Check {
    fn ensure(&self, ok: bool, message: impl FnOnce() -> String) -> Outcome {
        if ok {
            Ok(())
        } else {
            Err(self.fail(message()))
        }
    }

    fn fail(&self, message: String) -> ConformanceError {
        ConformanceError::Violation {
            check: self.0,
            message,
        }
    }

    fn call<T>(&self, call: &'static str, r: Result<T, StoreError>) -> Result<T, ConformanceError> {
        r.map_err(|source| ConformanceError::Store {
            check: self.0,
            call,
            source,
        })
    }

    /// Expects a conflict with the given expected and current revisions.
    fn conflict<T: std::fmt::Debug>(
        &self,
        r: Result<T, StoreError>,
        expected: i64,
        current: i64,
    ) -> Outcome {
        match r {
            Err(StoreError::Conflict {
                expected: e,
                current: c,
                ..
            }) if e == expected && c == current => Ok(()),
            other => Err(self.fail(format!(
                "wanted Conflict(expected {expected}, current {current}), got {other:?}"
            ))),
        }
    }

    async fn next(&self, events: &mut EventStream) -> Result<StoreEvent, ConformanceError> {
        match tokio::time::timeout(EVENT_TIMEOUT, events.next()).await {
            Ok(Some(Ok(event))) => Ok(event),
            Ok(Some(Err(e))) => Err(self.fail(format!("watch failed: {e}"))),
            Ok(None) => Err(self.fail("watch ended early".into())),
            Err(_) => Err(self.fail("no watch event within 10 s".into())),
        }
    }

    async fn put(
        &self,
        store: &dyn Store,
        id: &EntityId,
        spec: Value,
        expected: Option<i64>,
    ) -> Result<i64, ConformanceError> {
        let op = PutOp {
            id: id.clone(),
            spec,
            expected_revision: expected,
        };
        let out = self.call("put", store.put(vec![op]).await)?;
        out.first()
            .map(|e| e.revision)
            .ok_or_else(|| self.fail("put returned no entity".into()))
    }
}

/// An id of `kind` no other check (or earlier run) uses.
fn unique(kind: Kind, label: &str) -> Result<EntityId, ConformanceError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{label}-{}-{n}", std::process::id());
    EntityId::new(kind, name).map_err(|e| ConformanceError::Violation {
        check: "unique id",
        message: e.to_string(),
    })
}

fn spec(version: u32) -> Value {
    json!({"containers": [{"name": "app", "image": format!("busybox:{version}")}]})
}

/// Every write gets a new revision, larger than any before; reads report the latest.
pub async fn revisions_increase(store: &dyn Store) -> Outcome {
    let c = Check("revisions_increase");
    let start = c.call("revision", store.revision().await)?;
    let a = unique(Kind::Sandbox, "rev")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let r2 = c.put(store, &a, spec(2), None).await?;
    let status = c.call(
        "patch_status",
        store
            .patch_status(&a, json!({"phase": "running"}), r2)
            .await,
    )?;
    let (_, r4) = c.call("delete", store.delete(&a, None).await)?;
    let revs = [start, r1, r2, status.revision, r4];
    c.ensure(revs.windows(2).all(|w| w[0] < w[1]), || {
        format!("not increasing: {revs:?}")
    })?;
    let now = c.call("revision", store.revision().await)?;
    c.ensure(now == r4, || {
        format!("revision() is {now}, last write was {r4}")
    })
}

/// `expected_revision = Some(0)` creates only; an existing entity conflicts.
pub async fn create_only_conflicts_when_it_exists(store: &dyn Store) -> Outcome {
    let c = Check("create_only_conflicts_when_it_exists");
    let a = unique(Kind::Sandbox, "create")?;
    let r1 = c.put(store, &a, spec(1), Some(0)).await?;
    let again = store
        .put(vec![PutOp {
            id: a.clone(),
            spec: spec(2),
            expected_revision: Some(0),
        }])
        .await;
    c.conflict(again, 0, r1)?;
    let kept = c.call("get", store.get(&a).await)?;
    c.ensure(kept.is_some_and(|e| e.spec == spec(1)), || {
        "the refused create changed the entity".into()
    })
}

/// An update expecting an old revision (or a missing entity) conflicts and changes nothing.
pub async fn stale_update_conflicts(store: &dyn Store) -> Outcome {
    let c = Check("stale_update_conflicts");
    let a = unique(Kind::Sandbox, "stale")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let r2 = c.put(store, &a, spec(2), Some(r1)).await?;
    let stale = store
        .put(vec![PutOp {
            id: a.clone(),
            spec: spec(3),
            expected_revision: Some(r1),
        }])
        .await;
    c.conflict(stale, r1, r2)?;
    let missing = unique(Kind::Sandbox, "missing")?;
    let absent = store
        .put(vec![PutOp {
            id: missing.clone(),
            spec: spec(1),
            expected_revision: Some(r2),
        }])
        .await;
    c.conflict(absent, r2, 0)?;
    let stale_delete = store.delete(&a, Some(r1)).await;
    c.conflict(stale_delete, r1, r2)?;
    let kept = c.call("get", store.get(&a).await)?;
    c.ensure(
        kept.is_some_and(|e| e.spec == spec(2) && e.revision == r2),
        || "a refused write changed the entity".into(),
    )?;
    match store.delete(&missing, None).await {
        Err(StoreError::NotFound(_)) => Ok(()),
        other => Err(c.fail(format!(
            "deleting a missing entity: wanted NotFound, got {other:?}"
        ))),
    }
}

/// `patch_status` needs the current revision, replaces only the status and bumps the revision.
pub async fn patch_status_needs_the_current_revision(store: &dyn Store) -> Outcome {
    let c = Check("patch_status_needs_the_current_revision");
    let a = unique(Kind::Sandbox, "patch")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let stale = store
        .patch_status(&a, json!({"phase": "running"}), r1 + 100)
        .await;
    c.conflict(stale, r1 + 100, r1)?;
    let patched = c.call(
        "patch_status",
        store
            .patch_status(&a, json!({"phase": "running"}), r1)
            .await,
    )?;
    c.ensure(patched.revision > r1, || {
        format!("revision did not bump: {} after {r1}", patched.revision)
    })?;
    c.ensure(patched.spec == spec(1), || {
        "patch_status changed the spec".into()
    })?;
    c.ensure(patched.status == json!({"phase": "running"}), || {
        format!("status is {}", patched.status)
    })?;
    let updated = c.call(
        "put",
        store
            .put(vec![PutOp {
                id: a.clone(),
                spec: spec(2),
                expected_revision: None,
            }])
            .await,
    )?;
    c.ensure(
        updated
            .first()
            .is_some_and(|e| e.status == json!({"phase": "running"})),
        || "a spec update dropped the status".into(),
    )?;
    match store
        .patch_status(&unique(Kind::Sandbox, "nobody")?, json!({}), 1)
        .await
    {
        Err(StoreError::NotFound(_)) => Ok(()),
        other => Err(c.fail(format!(
            "patching a missing entity: wanted NotFound, got {other:?}"
        ))),
    }
}

/// A batch with one failing op applies nothing and uses no revision.
pub async fn a_failing_op_leaves_the_batch_unapplied(store: &dyn Store) -> Outcome {
    let c = Check("a_failing_op_leaves_the_batch_unapplied");
    let a = unique(Kind::Sandbox, "batch")?;
    let b = unique(Kind::Sandbox, "batch")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let before = c.call("revision", store.revision().await)?;
    let batch = vec![
        PutOp {
            id: b.clone(),
            spec: spec(1),
            expected_revision: Some(0),
        },
        PutOp {
            id: a.clone(),
            spec: spec(2),
            expected_revision: None,
        },
        PutOp {
            id: a.clone(),
            spec: spec(3),
            expected_revision: Some(r1),
        },
    ];
    // The third op sees the second's write, so it conflicts.
    let refused = store.put(batch).await;
    c.ensure(matches!(refused, Err(StoreError::Conflict { .. })), || {
        format!("wanted Conflict, got {refused:?}")
    })?;
    c.ensure(c.call("get", store.get(&b).await)?.is_none(), || {
        "the refused batch created an entity".into()
    })?;
    let kept = c.call("get", store.get(&a).await)?;
    c.ensure(kept.is_some_and(|e| e.spec == spec(1)), || {
        "the refused batch changed an entity".into()
    })?;
    let after = c.call("revision", store.revision().await)?;
    c.ensure(after == before, || {
        format!("revision moved from {before} to {after}")
    })?;
    let ok = c.call(
        "put",
        store
            .put(vec![
                PutOp {
                    id: b.clone(),
                    spec: spec(1),
                    expected_revision: Some(0),
                },
                PutOp {
                    id: a.clone(),
                    spec: spec(2),
                    expected_revision: Some(r1),
                },
            ])
            .await,
    )?;
    c.ensure(
        ok.len() == 2 && ok.iter().all(|e| e.revision > before),
        || format!("batch answered {ok:?}"),
    )
}

/// Putting the spec already stored changes nothing and uses no revision.
pub async fn putting_the_same_spec_is_a_no_op(store: &dyn Store) -> Outcome {
    let c = Check("putting_the_same_spec_is_a_no_op");
    let a = unique(Kind::Sandbox, "noop")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let mut events = c.call("watch", store.watch(Some(Kind::Sandbox), r1 + 1).await)?;
    let again = c.put(store, &a, spec(1), Some(r1)).await?;
    c.ensure(again == r1, || {
        format!("no-op put answered revision {again}, wanted {r1}")
    })?;
    let now = c.call("revision", store.revision().await)?;
    c.ensure(now == r1, || {
        format!("no-op put moved the revision to {now}")
    })?;
    let r2 = c.put(store, &a, spec(2), None).await?;
    let first = c.next(&mut events).await?;
    c.ensure(first.revision() == r2, || {
        format!(
            "watch saw revision {} before the real change {r2}",
            first.revision()
        )
    })
}

/// A watch from a past revision replays history in order, then streams live changes with
/// no gap and no duplicate; other kinds are filtered out; 0 means "from now".
pub async fn watch_replays_history_then_streams_live(store: &dyn Store) -> Outcome {
    let c = Check("watch_replays_history_then_streams_live");
    let a = unique(Kind::Sandbox, "replay")?;
    let b = unique(Kind::Sandbox, "replay")?;
    let art = unique(Kind::Artifact, "replay")?;
    c.put(store, &a, spec(1), None).await?;
    let r2 = c.put(store, &b, spec(1), None).await?;
    let _art = c.put(store, &art, json!({"image": "x"}), None).await?;
    let r3 = c.put(store, &a, spec(2), None).await?;
    let mut from_now = c.call("watch", store.watch(Some(Kind::Sandbox), 0).await)?;
    let mut events = c.call("watch", store.watch(Some(Kind::Sandbox), r2).await)?;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(c.next(&mut events).await?.revision());
    }
    c.ensure(seen == [r2, r3], || {
        format!("replay gave {seen:?}, wanted [{r2}, {r3}]")
    })?;
    let r4 = c.put(store, &b, spec(2), None).await?;
    let r5 = c.call("delete", store.delete(&a, None).await)?.1;
    for want in [r4, r5] {
        let got = c.next(&mut events).await?.revision();
        c.ensure(got == want, || format!("live event {got}, wanted {want}"))?;
    }
    let got = c.next(&mut from_now).await?.revision();
    c.ensure(got == r4, || {
        format!("watch from now began with {got}, wanted {r4}")
    })
}

/// Deletions reach watchers as `Delete` carrying the last state.
pub async fn watches_see_deletes(store: &dyn Store) -> Outcome {
    let c = Check("watches_see_deletes");
    let a = unique(Kind::Sandbox, "del")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let mut events = c.call("watch", store.watch(None, 0).await)?;
    let (last, revision) = c.call("delete", store.delete(&a, Some(r1)).await)?;
    c.ensure(last.revision == r1 && revision > r1, || {
        format!("delete answered {} at {revision}", last.revision)
    })?;
    match c.next(&mut events).await? {
        StoreEvent::Delete { prev, revision: r } if prev.id == a && r == revision => Ok(()),
        other => Err(c.fail(format!("wanted Delete of {a} at {revision}, got {other:?}"))),
    }?;
    c.ensure(c.call("get", store.get(&a).await)?.is_none(), || {
        "deleted entity still readable".into()
    })
}

/// A watcher that reads nothing while many changes land still gets every one, in order
/// (the store must keep at least 3000 revisions of history for this check).
pub async fn slow_watcher_loses_nothing(store: &dyn Store) -> Outcome {
    let c = Check("slow_watcher_loses_nothing");
    let mut events = c.call("watch", store.watch(Some(Kind::Sandbox), 0).await)?;
    // Batches of 100 stay within what etcd accepts in one transaction.
    let mut stored = Vec::new();
    for _ in 0..30 {
        let ops = (0..100)
            .map(|_| {
                Ok(PutOp {
                    id: unique(Kind::Sandbox, "slow")?,
                    spec: spec(1),
                    expected_revision: None,
                })
            })
            .collect::<Result<Vec<_>, ConformanceError>>()?;
        stored.extend(c.call("put", store.put(ops).await)?);
    }
    let mut last = 0;
    for entity in &stored {
        let got = c.next(&mut events).await?;
        let ok = matches!(&got, StoreEvent::Put { entity: e, .. } if e.id == entity.id)
            && got.revision() >= last;
        c.ensure(ok, || {
            format!(
                "wanted {} next, got {:?} (after {last})",
                entity.id,
                got.revision()
            )
        })?;
        last = got.revision();
    }
    Ok(())
}

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
    let patched = c.call(
        "patch_status",
        store
            .patch_status(&a, json!({"phase": "running"}), r1)
            .await,
    )?;
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

/// `delete_fenced` without a fence is `delete`: a stale expected revision conflicts and
/// deletes nothing, the current one deletes, a missing entity is `NotFound`.
pub async fn an_unfenced_delete_fenced_is_a_delete(store: &dyn Store) -> Outcome {
    let c = Check("an_unfenced_delete_fenced_is_a_delete");
    let a = unique(Kind::Sandbox, "fence")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let r2 = c.put(store, &a, spec(2), None).await?;
    c.conflict(store.delete_fenced(&a, Some(r1), None).await, r1, r2)?;
    c.ensure(c.call("get", store.get(&a).await)?.is_some(), || {
        "a refused delete removed the entity".into()
    })?;
    let (last, revision) = c.call(
        "delete_fenced",
        store.delete_fenced(&a, Some(r2), None).await,
    )?;
    c.ensure(last.revision == r2 && revision > r2, || {
        format!("delete_fenced answered {} at {revision}", last.revision)
    })?;
    match store.delete_fenced(&a, None, None).await {
        Err(StoreError::NotFound(_)) => Ok(()),
        other => Err(c.fail(format!("wanted NotFound, got {other:?}"))),
    }
}
