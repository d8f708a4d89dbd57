//! Test harness shared by the `watch_*` integration tests: a private entity server on a
//! unix socket in a temp dir, stoppable and restartable on the same store file.

// Each test crate uses a different part of the harness.
#![allow(dead_code)]

use std::time::Duration;

use converge::server::store::{PutOp, Store};
use converge::server::{ServerError, StoreUrl, listen, open_store, serve_bound};
use converge_watch::{Entity, EntityClient, EntityId, ServerAddress, StreamEvent};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for any one expected event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A running server: how to stop it, and its task.
type Running = (oneshot::Sender<()>, JoinHandle<Result<(), ServerError>>);

/// A private entity server over a redb file in its own temp dir.
pub struct TestServer {
    dir: tempfile::TempDir,
    history_limit: u64,
    running: Option<Running>,
}

impl TestServer {
    /// Starts a server keeping `history_limit` revisions of history.
    pub async fn start(history_limit: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            dir,
            history_limit,
            running: None,
        };
        server.restart().await;
        server
    }

    /// Where the server listens.
    pub fn address(&self) -> ServerAddress {
        ServerAddress::Unix(self.dir.path().join("entity.sock"))
    }

    fn store_url(&self) -> StoreUrl {
        StoreUrl::Redb(self.dir.path().join("entities.redb"))
    }

    /// Starts serving again on the same socket and store file (the server must be stopped).
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "server already running");
        let store = open_store(&self.store_url(), self.history_limit)
            .await
            .expect("open store");
        let bound = listen::bind(&self.address()).await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_bound(store, bound, async move {
            let _ = stopped.await;
        }));
        self.running = Some((stop, task));
    }

    /// Stops the server and waits until it has closed its store and socket.
    pub async fn stop(&mut self) {
        let (stop, task) = self.running.take().expect("server running");
        let _ = stop.send(());
        task.await
            .expect("server task")
            .expect("server shut down cleanly");
    }

    /// Opens the store file directly (the server must be stopped) to change it behind the
    /// back of every client.
    pub async fn offline_store(&self) -> std::sync::Arc<dyn Store> {
        assert!(self.running.is_none(), "stop the server first");
        open_store(&self.store_url(), self.history_limit)
            .await
            .expect("open store offline")
    }

    /// A client connected to this server.
    pub async fn client(&self) -> EntityClient {
        EntityClient::connect(&self.address())
            .await
            .expect("connect")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some((stop, _task)) = self.running.take() {
            let _ = stop.send(());
        }
    }
}

/// A sandbox id.
pub fn sandbox_id(name: &str) -> EntityId {
    format!("sandbox/{name}").parse().expect("sandbox id")
}

/// A valid sandbox spec, on `node` when given; `version` makes specs differ.
pub fn sandbox_spec(node: Option<&str>, version: u32) -> Value {
    let mut spec = json!({
        "labels": {"version": version.to_string()},
        "containers": [{"name": "app", "image": "busybox"}],
    });
    if let Some(node) = node {
        spec["node"] = json!(node);
    }
    spec
}

/// A put of a sandbox for the offline store.
pub fn sandbox_put(name: &str, node: Option<&str>, version: u32) -> PutOp {
    PutOp {
        id: sandbox_id(name),
        spec: sandbox_spec(node, version),
        expected_revision: None,
    }
}

/// The next event of `stream`, failing the test after [`EVENT_TIMEOUT`].
pub async fn next_event<S: Stream<Item = StreamEvent> + Unpin>(stream: &mut S) -> StreamEvent {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("an event within the timeout")
        .expect("the stream never ends")
}

/// Sorted names of `entities`.
pub fn names(entities: &[Entity]) -> Vec<String> {
    let mut names: Vec<String> = entities.iter().map(|e| e.id.name().to_string()).collect();
    names.sort();
    names
}

/// `entity` as it looks after crossing the wire (timestamps at millisecond precision).
pub fn over_wire(entity: Entity) -> Entity {
    Entity::from_proto(&entity.to_proto()).expect("round trip")
}
