//! Group commit in `RedbStore`: many concurrent writers, some conflicting on purpose, get
//! gap-free revisions and exactly the expected conflicts, and watchers see every change once.

use std::collections::BTreeSet;
use std::sync::Arc;

use converge::server::store::{PutOp, RedbStore, Store, StoreError, StoreEvent};
use converge_watch::{EntityId, Kind};
use futures::StreamExt;
use serde_json::json;

const WRITERS: usize = 64;
/// Writers that each put a batch ending in a create-only put of one shared entity.
const CONTENDERS: usize = 16;

fn sandbox(name: &str) -> EntityId {
    EntityId::new(Kind::Sandbox, name).expect("valid id")
}

fn create(name: &str, n: usize) -> PutOp {
    PutOp {
        id: sandbox(name),
        spec: json!({ "n": n }),
        expected_revision: Some(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_get_gap_free_revisions_and_exactly_the_expected_conflicts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        RedbStore::open(dir.path().join("entities.redb"), 10_000)
            .await
            .expect("open store"),
    );
    let mut watch = store.watch(None, 0).await.expect("watch");

    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let ops = if i < CONTENDERS {
                // All-or-nothing: a loser must not leave its own entity behind.
                vec![create(&format!("own-{i}"), i), create("contested", i)]
            } else {
                vec![create(&format!("solo-{i}"), i)]
            };
            (i, store.put(ops).await)
        }));
    }

    let mut revisions = BTreeSet::new();
    let mut conflicts = 0;
    let mut winners = Vec::new();
    for writer in writers {
        let (i, result) = writer.await.expect("writer task");
        match result {
            Ok(entities) => {
                for entity in entities {
                    assert!(
                        revisions.insert(entity.revision),
                        "revision handed out twice"
                    );
                }
                if i < CONTENDERS {
                    winners.push(i);
                }
            }
            Err(StoreError::Conflict { id, expected, .. }) => {
                assert_eq!((id.as_str(), expected), ("sandbox/contested", 0));
                conflicts += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let total = (WRITERS - CONTENDERS) + 2;
    assert_eq!(winners.len(), 1, "exactly one contender wins");
    assert_eq!(conflicts, CONTENDERS - 1);
    let expected: BTreeSet<i64> = (1..=total as i64).collect();
    assert_eq!(revisions, expected, "revisions are gap-free and unique");
    assert_eq!(store.revision().await.expect("revision"), total as i64);

    for i in (0..CONTENDERS).filter(|i| !winners.contains(i)) {
        let leftover = store.get(&sandbox(&format!("own-{i}"))).await.expect("get");
        assert!(leftover.is_none(), "a failed batch left a trace");
    }
    let listing = store.list(Some(Kind::Sandbox)).await.expect("list");
    assert_eq!(listing.entities.len(), total);

    let mut seen = Vec::new();
    while seen.len() < total {
        match watch.next().await {
            Some(Ok(event)) => seen.push(event),
            other => panic!("watch ended early: {other:?}"),
        }
    }
    let seen_revisions: Vec<i64> = seen.iter().map(StoreEvent::revision).collect();
    assert_eq!(seen_revisions, (1..=total as i64).collect::<Vec<_>>());
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_deletes_and_status_patches_keep_their_own_checks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        RedbStore::open(dir.path().join("entities.redb"), 10_000)
            .await
            .expect("open store"),
    );
    let created = store.put(vec![create("shared", 0)]).await.expect("create");
    let base = created[0].revision;
    let mut watch = store.watch(None, base + 1).await.expect("watch");

    // Every writer races on the same revision: exactly one of each kind of write can win
    // against the state the earlier writes of the same group left.
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let id = sandbox("shared");
            match i % 2 {
                0 => store
                    .put(vec![PutOp {
                        id,
                        spec: json!({ "n": i + 1 }),
                        expected_revision: Some(base),
                    }])
                    .await
                    .map(|e| e[0].revision),
                _ => store
                    .patch_status(&id, json!({ "w": i }), base)
                    .await
                    .map(|e| e.revision),
            }
        }));
    }
    let mut wins = Vec::new();
    for writer in writers {
        match writer.await.expect("writer task") {
            Ok(revision) => wins.push(revision),
            Err(StoreError::Conflict { expected, .. }) => assert_eq!(expected, base),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(
        wins,
        vec![base + 1],
        "exactly one write at the expected revision wins"
    );
    let (prev, deleted_at) = store
        .delete(&sandbox("shared"), Some(base + 1))
        .await
        .expect("delete");
    assert_eq!((prev.revision, deleted_at), (base + 1, base + 2));

    let first = watch.next().await.expect("event").expect("ok");
    let second = watch.next().await.expect("event").expect("ok");
    assert_eq!((first.revision(), second.revision()), (base + 1, base + 2));
    assert!(matches!(second, StoreEvent::Delete { .. }));
    store.close().await.expect("close");
}
