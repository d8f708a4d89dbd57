//! Watches: history replay followed by live changes, and a slow watcher that loses nothing.

use converge_watch::Kind;
use serde_json::json;

use super::super::{Store, StoreEvent};
use super::{Check, ConformanceError, Outcome, op, spec, unique};

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

/// A watcher that reads nothing while many changes land still gets every one, in order
/// (the store must keep at least 3000 revisions of history for this check).
pub async fn slow_watcher_loses_nothing(store: &dyn Store) -> Outcome {
    let c = Check("slow_watcher_loses_nothing");
    let mut events = c.call("watch", store.watch(Some(Kind::Sandbox), 0).await)?;
    // Batches of 100 stay within what etcd accepts in one transaction.
    let mut stored = Vec::new();
    for _ in 0..30 {
        let ops = (0..100)
            .map(|_| Ok(op(&unique(Kind::Sandbox, "slow")?, spec(1), None)))
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
