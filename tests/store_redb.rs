//! Runs the store conformance suite, and redb-specific checks, against `RedbStore`.

mod store_support;

use std::path::Path;
use std::sync::Arc;

use converge::server::store::conformance;
use converge::server::store::{RedbStore, Store, StoreError};
use store_support::store_conformance_tests;
use tempfile::TempDir;

async fn fresh(limit: u64) -> (TempDir, RedbStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path().join("entities.redb"), limit)
        .await
        .expect("open store");
    (dir, store)
}

store_conformance_tests!(fresh(10_000).await);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_answers_compacted() {
    let (_dir, store) = fresh(5).await;
    conformance::compaction_answers_compacted(&store, 5)
        .await
        .expect("store contract");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_revision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("entities.redb");
    conformance::reopen_keeps_data_and_revision(|| open(&path))
        .await
        .expect("store contract");
}

async fn open(path: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(RedbStore::open(path, 1000).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_exactly_the_last_history_limit_revisions() {
    let (_dir, store) = fresh(5).await;
    let id: converge_watch::EntityId = "sandbox/a".parse().expect("id");
    for n in 0..20 {
        let op = converge::server::store::PutOp {
            id: id.clone(),
            spec: serde_json::json!({"n": n}),
            expected_revision: None,
        };
        store.put(vec![op]).await.expect("put");
    }
    assert_eq!(store.revision().await.expect("revision"), 20);
    match store.watch(None, 15).await {
        Err(StoreError::Compacted {
            requested: 15,
            compact_revision: 16,
        }) => {}
        other => panic!("wanted Compacted(16), got {:?}", other.map(|_| "a stream")),
    }
    let _kept = store
        .watch(None, 16)
        .await
        .expect("revision 16 is still kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_refuses_calls_and_ends_watches() {
    use futures::StreamExt;
    let (_dir, store) = fresh(10).await;
    let events = store.watch(None, 0).await.expect("watch");
    store.close().await.expect("close");
    assert!(matches!(
        store.revision().await,
        Err(StoreError::Unavailable { .. })
    ));
    // The watch ends, at most after reporting that the store is unavailable.
    let rest = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        events.collect::<Vec<_>>(),
    )
    .await
    .expect("watch should end on close");
    assert!(
        rest.iter()
            .all(|e| matches!(e, Err(StoreError::Unavailable { .. }))),
        "only an unavailable error may follow a close: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_file_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("entities.redb");
    let first = RedbStore::open(&path, 10).await.expect("open");
    assert!(matches!(
        RedbStore::open(&path, 10).await,
        Err(StoreError::Unavailable { .. })
    ));
    first.close().await.expect("close");
    RedbStore::open(&path, 10)
        .await
        .expect("reopen after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_left_behind_by_compaction_gets_compacted_after_a_gap_free_prefix() {
    use futures::StreamExt;
    let (_dir, store) = fresh(100).await;
    let events = store.watch(None, 0).await.expect("watch");
    for batch in 0..30 {
        let ops = (0..100)
            .map(|n| converge::server::store::PutOp {
                id: format!("sandbox/s-{batch}-{n}").parse().expect("id"),
                spec: serde_json::json!({}),
                expected_revision: None,
            })
            .collect();
        store.put(ops).await.expect("put");
    }
    let all: Vec<_> = tokio::time::timeout(std::time::Duration::from_secs(10), events.collect())
        .await
        .expect("the watch ends after Compacted");
    let (last, delivered) = all.split_last().expect("something delivered");
    assert!(
        matches!(last, Err(StoreError::Compacted { .. })),
        "ends with Compacted: {last:?}"
    );
    for (i, event) in delivered.iter().enumerate() {
        let revision = event
            .as_ref()
            .expect("only the last item is an error")
            .revision();
        assert_eq!(revision, i as i64 + 1, "no gap before the compaction");
    }
}
