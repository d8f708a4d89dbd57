//! Runs the store conformance suite, and etcd-specific checks, against `EtcdStore` on a
//! private etcd cluster per test.

mod store_support;

use std::sync::Arc;
use std::time::Duration;

use converge::server::store::etcd::{EtcdConfig, EtcdStore, MAX_TXN_OPS};
use converge::server::store::{PutOp, Store, StoreError, StoreEvent, conformance};
use converge_testkit::etcd::EtcdCluster;
use converge_testkit::unique_name;
use converge_watch::{EntityId, Kind};
use futures::StreamExt;
use serde_json::json;
use store_support::store_conformance_tests;

const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

async fn cluster(members: usize) -> EtcdCluster {
    EtcdCluster::start(members).await.expect("start etcd")
}

fn config(endpoints: Vec<String>, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        prefix: prefix.to_string(),
        ..EtcdConfig::new(endpoints)
    }
}

async fn store_on(cluster: &EtcdCluster) -> EtcdStore {
    EtcdStore::connect(config(cluster.endpoints(), "/converge"))
        .await
        .expect("connect")
}

fn id(label: &str) -> EntityId {
    EntityId::new(Kind::Sandbox, unique_name(label)).expect("id")
}

fn put(id: &EntityId, version: u32, expected: Option<i64>) -> PutOp {
    PutOp {
        id: id.clone(),
        spec: json!({"containers": [{"name": "app", "image": format!("busybox:{version}")}]}),
        expected_revision: expected,
    }
}

async fn next(events: &mut converge::server::store::EventStream) -> StoreEvent {
    tokio::time::timeout(EVENT_TIMEOUT, events.next())
        .await
        .expect("an event in time")
        .expect("the watch goes on")
        .expect("no watch error")
}

/// Puts `ops`, retrying while the cluster elects a new leader (a write may then fail with
/// `Unavailable`; re-putting the same specs unconditionally is safe).
async fn put_through_elections(store: &EtcdStore, ops: Vec<PutOp>) -> Vec<converge_watch::Entity> {
    for _ in 0..50 {
        match store.put(ops.clone()).await {
            Ok(stored) => return stored,
            Err(StoreError::Unavailable { message, .. }) => {
                eprintln!("put failed during an election, retrying: {message}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("put: {e}"),
        }
    }
    panic!("no put succeeded within 5 s");
}

store_conformance_tests!(
    async {
        let cluster = cluster(1).await;
        let store = store_on(&cluster).await;
        (cluster, store)
    }
    .await
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_answers_compacted() {
    let cluster = cluster(1).await;
    let store = store_on(&cluster).await;
    conformance::compaction_answers_compacted_when(&store, 18, |current| store.compact(current))
        .await
        .expect("store contract");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_revision() {
    let cluster = cluster(1).await;
    let endpoints = cluster.endpoints();
    conformance::reopen_keeps_data_and_revision(|| {
        let endpoints = endpoints.clone();
        async move {
            let store: Arc<dyn Store> =
                Arc::new(EtcdStore::connect(config(endpoints, "/converge")).await?);
            Ok(store)
        }
    })
    .await
    .expect("store contract");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_shares_one_revision_and_values_carry_no_revisions() {
    let cluster = cluster(1).await;
    let store = store_on(&cluster).await;
    let (a, b) = (id("batch"), id("batch"));
    let stored = store
        .put(vec![put(&a, 1, Some(0)), put(&b, 1, None)])
        .await
        .expect("put");
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].revision, stored[1].revision);
    assert_eq!(stored[0].create_revision, stored[0].revision);
    assert_eq!(
        store.revision().await.expect("revision"),
        stored[0].revision
    );

    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .expect("raw client");
    let key = format!("/converge/entities/sandbox/{}", a.name());
    let resp = raw.get(key.as_str(), None).await.expect("raw get");
    let kv = resp.kvs().first().expect("the key exists");
    assert_eq!(kv.mod_revision(), stored[0].revision);
    let value: serde_json::Value = serde_json::from_slice(kv.value()).expect("JSON value");
    assert_eq!(value["id"], json!(a.to_string()));
    assert!(value.get("revision").is_none() && value.get("create_revision").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_txn_limit_is_refused_and_changes_nothing() {
    let cluster = cluster(1).await;
    let store = store_on(&cluster).await;
    let before = store.revision().await.expect("revision");
    let ops: Vec<PutOp> = (0..=MAX_TXN_OPS)
        .map(|_| put(&id("big"), 1, None))
        .collect();
    let err = store.put(ops).await.expect_err("too many ops");
    assert!(err.to_string().contains("128"), "{err}");
    assert_eq!(store.revision().await.expect("revision"), before);
    let listed = store.list(Some(Kind::Sandbox)).await.expect("list");
    assert!(listed.entities.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unconditional_puts_to_one_entity_all_land() {
    let cluster = cluster(1).await;
    let store = Arc::new(store_on(&cluster).await);
    let a = id("race");
    let writers = (0..4u32).map(|w| {
        let store = Arc::clone(&store);
        let a = a.clone();
        tokio::spawn(async move {
            for n in 0..10 {
                store.put(vec![put(&a, w * 100 + n, None)]).await?;
            }
            Ok::<_, StoreError>(())
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer
            .expect("writer task")
            .expect("every unconditional put lands");
    }
    let entity = store.get(&a).await.expect("get").expect("exists");
    assert_eq!(entity.revision, store.revision().await.expect("revision"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_with_different_prefixes_do_not_see_each_other() {
    let cluster = cluster(1).await;
    let one = EtcdStore::connect(config(cluster.endpoints(), "/one"))
        .await
        .expect("connect");
    let two = EtcdStore::connect(config(cluster.endpoints(), "two/"))
        .await
        .expect("connect");
    assert_eq!(two.prefix(), "/two");
    let a = id("prefix");
    one.put(vec![put(&a, 1, None)]).await.expect("put");
    assert!(two.get(&a).await.expect("get").is_none());
    assert!(two.list(None).await.expect("list").entities.is_empty());
    assert_eq!(one.list(None).await.expect("list").entities.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_with_unavailable() {
    let port = converge_testkit::free_loopback_port().expect("free port");
    let config = EtcdConfig {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(1),
        ..EtcdConfig::new(vec![format!("http://127.0.0.1:{port}")])
    };
    match EtcdStore::connect(config).await {
        Err(StoreError::Unavailable { message, .. }) => {
            assert!(message.contains(&port.to_string()), "{message}")
        }
        Err(other) => panic!("wanted Unavailable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_refuses_calls_and_ends_watches() {
    let cluster = cluster(1).await;
    let store = store_on(&cluster).await;
    let events = store.watch(None, 0).await.expect("watch");
    store.close().await.expect("close");
    assert!(matches!(
        store.revision().await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(matches!(
        store.watch(None, 1).await,
        Err(StoreError::Unavailable { .. })
    ));
    let rest = tokio::time::timeout(Duration::from_secs(5), events.collect::<Vec<_>>())
        .await
        .expect("watch should end on close");
    assert!(rest.is_empty(), "events after close: {rest:?}");
}

/// The watcher talks to members 0 and 1, the writer only to member 2; killing the member
/// the watch uses must not lose or repeat an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_without_gaps_when_its_member_dies() {
    let mut cluster = cluster(3).await;
    let endpoints = cluster.endpoints();
    let watcher = EtcdStore::connect(config(endpoints[..2].to_vec(), "/converge"))
        .await
        .expect("connect watcher");
    let writer = EtcdStore::connect(config(endpoints[2..].to_vec(), "/converge"))
        .await
        .expect("connect writer");
    let mut events = watcher.watch(Some(Kind::Sandbox), 0).await.expect("watch");
    let mut written = Vec::new();
    for round in 0..3 {
        for _ in 0..5 {
            let batch = vec![put(&id("resume"), 1, None), put(&id("resume"), 1, None)];
            written.extend(put_through_elections(&writer, batch).await);
        }
        match round {
            0 => cluster.kill_member(0).expect("kill 0"),
            1 => {
                cluster.restart_member(0).await.expect("restart 0");
                cluster.kill_member(1).expect("kill 1");
            }
            _ => {}
        }
    }
    for want in &written {
        match next(&mut events).await {
            StoreEvent::Put { entity, prev: None } => {
                assert_eq!((&entity.id, entity.revision), (&want.id, want.revision))
            }
            other => panic!("wanted the creation of {}, got {other:?}", want.id),
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(extra.is_err(), "an event more than written: {extra:?}");
}
