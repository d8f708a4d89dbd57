//! Graceful shutdown lets a unary call already in flight finish, refuses new connections,
//! and only then closes the store.

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use converge::server::store::{EventStream, Listing, PutOp, RedbStore, Store, StoreError};
use converge::server::{listen, serve_bound};
use converge_watch::proto::PutRequest;
use converge_watch::{Entity, EntityId, Kind, ServerAddress};
use serde_json::Value;
use server_support::connect_unix;
use tokio::sync::{Mutex, Notify, oneshot};

const WAIT: Duration = Duration::from_secs(10);

/// A redb store whose `put` pauses until released, and which records whether it was closed.
struct GatedStore {
    inner: RedbStore,
    entered: Notify,
    release: Mutex<Option<oneshot::Receiver<()>>>,
    closed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Store for GatedStore {
    async fn get(&self, id: &EntityId) -> Result<Option<Entity>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, kind: Option<Kind>) -> Result<Listing, StoreError> {
        self.inner.list(kind).await
    }
    async fn put(&self, ops: Vec<PutOp>) -> Result<Vec<Entity>, StoreError> {
        self.entered.notify_one();
        if let Some(release) = self.release.lock().await.take() {
            let _ = release.await;
        }
        self.inner.put(ops).await
    }
    async fn patch_status(
        &self,
        id: &EntityId,
        status: Value,
        expected: i64,
    ) -> Result<Entity, StoreError> {
        self.inner.patch_status(id, status, expected).await
    }
    async fn delete(
        &self,
        id: &EntityId,
        expected: Option<i64>,
    ) -> Result<(Entity, i64), StoreError> {
        self.inner.delete(id, expected).await
    }
    async fn watch(&self, kind: Option<Kind>, from: i64) -> Result<EventStream, StoreError> {
        self.inner.watch(kind, from).await
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        self.inner.revision().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_put_finishes_before_the_store_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (release, gate) = oneshot::channel();
    let store = Arc::new(GatedStore {
        inner: RedbStore::open(dir.path().join("e.redb"), 100)
            .await
            .expect("open"),
        entered: Notify::new(),
        release: Mutex::new(Some(gate)),
        closed: Default::default(),
    });
    let socket = dir.path().join("entity.sock");
    let bound = listen::bind(&ServerAddress::Unix(socket.clone()))
        .await
        .expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_bound(store.clone(), bound, async move {
        let _ = stopped.await;
    }));

    let mut client = connect_unix(&socket).await.expect("connect");
    let spec = serde_json::json!({"containers": [{"name": "app", "image": "busybox"}]});
    let request = PutRequest {
        id: "sandbox/web".into(),
        spec_json: serde_json::to_vec(&spec).expect("json"),
        expected_revision: None,
    };
    let call = tokio::spawn(async move { client.put(request).await });
    tokio::time::timeout(WAIT, store.entered.notified())
        .await
        .expect("put reached the store");

    let _ = stop.send(());
    // Give the server every chance to (wrongly) close the store under the pending call.
    tokio::task::yield_now().await;
    assert!(
        !store.closed.load(std::sync::atomic::Ordering::SeqCst),
        "store closed too early"
    );
    let _ = release.send(());

    let answer = tokio::time::timeout(WAIT, call)
        .await
        .expect("call ends")
        .expect("task");
    let entity = answer
        .expect("the in-flight put succeeds")
        .into_inner()
        .entity
        .expect("entity");
    assert_eq!(entity.id, "sandbox/web");
    tokio::time::timeout(WAIT, server)
        .await
        .expect("shutdown")
        .expect("task")
        .expect("clean");
    assert!(
        store.closed.load(std::sync::atomic::Ordering::SeqCst),
        "store closed at the end"
    );
    assert!(!socket.exists(), "socket removed");
    assert!(
        tokio::net::UnixStream::connect(&socket).await.is_err(),
        "no longer accepting"
    );
}
