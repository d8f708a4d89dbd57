//! Revisions and conflicts: every write gets a new revision, stale or refused writes change nothing.

use converge_watch::Kind;
use serde_json::json;

use super::super::{Store, StoreError};
use super::{Check, Outcome, op, spec, unique};

/// Every write gets a new revision, larger than any before; reads report the latest.
pub async fn revisions_increase(store: &dyn Store) -> Outcome {
    let c = Check("revisions_increase");
    let start = c.call("revision", store.revision().await)?;
    let a = unique(Kind::Sandbox, "rev")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let r2 = c.put(store, &a, spec(2), None).await?;
    let status = c
        .patch_status(store, &a, json!({"phase": "running"}), r2)
        .await?;
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
    let again = store.put(vec![op(&a, spec(2), Some(0))]).await;
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
    let stale = store.put(vec![op(&a, spec(3), Some(r1))]).await;
    c.conflict(stale, r1, r2)?;
    let missing = unique(Kind::Sandbox, "missing")?;
    let absent = store.put(vec![op(&missing, spec(1), Some(r2))]).await;
    c.conflict(absent, r2, 0)?;
    let stale_delete = store.delete(&a, Some(r1)).await;
    c.conflict(stale_delete, r1, r2)?;
    let kept = c.call("get", store.get(&a).await)?;
    c.ensure(
        kept.is_some_and(|e| e.spec == spec(2) && e.revision == r2),
        || "a refused write changed the entity".into(),
    )?;
    c.not_found(
        "deleting a missing entity",
        store.delete(&missing, None).await,
    )
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
    let patched = c
        .patch_status(store, &a, json!({"phase": "running"}), r1)
        .await?;
    c.ensure(patched.revision > r1, || {
        format!("revision did not bump: {} after {r1}", patched.revision)
    })?;
    c.ensure(patched.spec == spec(1), || {
        "patch_status changed the spec".into()
    })?;
    c.ensure(patched.status == json!({"phase": "running"}), || {
        format!("status is {}", patched.status)
    })?;
    let updated = c.call("put", store.put(vec![op(&a, spec(2), None)]).await)?;
    c.ensure(
        updated
            .first()
            .is_some_and(|e| e.status == json!({"phase": "running"})),
        || "a spec update dropped the status".into(),
    )?;
    let nobody = unique(Kind::Sandbox, "nobody")?;
    c.not_found(
        "patching a missing entity",
        store.patch_status(&nobody, json!({}), 1).await,
    )
}

/// A batch with one failing op applies nothing and uses no revision.
pub async fn a_failing_op_leaves_the_batch_unapplied(store: &dyn Store) -> Outcome {
    let c = Check("a_failing_op_leaves_the_batch_unapplied");
    let a = unique(Kind::Sandbox, "batch")?;
    let b = unique(Kind::Sandbox, "batch")?;
    let r1 = c.put(store, &a, spec(1), None).await?;
    let before = c.call("revision", store.revision().await)?;
    let batch = vec![
        op(&b, spec(1), Some(0)),
        op(&a, spec(2), None),
        op(&a, spec(3), Some(r1)),
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
            .put(vec![op(&b, spec(1), Some(0)), op(&a, spec(2), Some(r1))])
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
