//! Deletes: watchers see them with the last state, and an unfenced `delete_fenced` is a plain delete.

use converge_watch::Kind;

use super::super::{Store, StoreEvent};
use super::{Check, Outcome, spec, unique};

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
    c.not_found(
        "deleting it again",
        store.delete_fenced(&a, None, None).await,
    )
}
