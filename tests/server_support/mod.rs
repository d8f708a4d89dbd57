//! Shared helpers of the entity-server tests: a server on a private socket and redb file,
//! a unix-socket client, and request builders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use converge::server::{ServerError, StoreUrl, listen, open_store, serve_bound};
use converge_watch::ServerAddress;
use converge_watch::proto::entities_client::EntitiesClient;
use converge_watch::proto::watch_event::Type;
use converge_watch::proto::{PutRequest, WatchEvent, WatchRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects the generated client to a unix socket.
pub async fn connect_unix(
    socket: &Path,
) -> Result<EntitiesClient<Channel>, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    let channel = Endpoint::from_static("http://converge.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(EntitiesClient::new(channel))
}

pub const WAIT: Duration = Duration::from_secs(10);

/// One server on a private socket and redb file inside `dir`.
pub struct TestServer {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    pub async fn start(dir: &Path, history_limit: u64) -> Self {
        let store = open_store(&StoreUrl::Redb(dir.join("entities.redb")), history_limit)
            .await
            .expect("open store");
        let socket = dir.join("run").join("entity.sock");
        let bound = listen::bind(&ServerAddress::Unix(socket.clone()))
            .await
            .expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_bound(store, bound, async move {
            let _ = stopped.await;
        }));
        Self {
            socket,
            stop: Some(stop),
            task,
        }
    }

    pub async fn client(&self) -> EntitiesClient<Channel> {
        connect_unix(&self.socket).await.expect("connect")
    }

    /// Triggers shutdown and waits for the server to finish it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("shutdown in time");
        done.expect("server task").expect("clean shutdown");
    }
}

pub fn sandbox(node: &str) -> Value {
    json!({"node": node, "containers": [{"name": "app", "image": "busybox"}]})
}

pub fn put(id: &str, spec: &Value, expected: Option<i64>) -> PutRequest {
    PutRequest {
        id: id.into(),
        spec_json: serde_json::to_vec(spec).expect("json"),
        expected_revision: expected,
    }
}

pub fn watch(kind: &str, node: &str, include_unassigned: bool, from: i64) -> WatchRequest {
    WatchRequest {
        kind: kind.into(),
        node: node.into(),
        include_unassigned,
        from_revision: from,
    }
}

pub async fn next(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    let item = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event in time");
    item.expect("stream healthy").expect("stream still open")
}

/// The next event that is not PROGRESS.
pub async fn next_change(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    loop {
        let event = next(stream).await;
        if event.r#type != Type::Progress as i32 {
            return event;
        }
    }
}

pub fn id_of(event: &WatchEvent) -> &str {
    event.entity.as_ref().map_or("", |e| e.id.as_str())
}
