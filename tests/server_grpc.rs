//! The entity server over a private unix socket: validation, conflicts, node-filtered
//! watches, compaction, socket mode, restarts and graceful shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use converge::server::store::DEFAULT_HISTORY_LIMIT;
use converge::server::{ServerError, StoreUrl, listen, open_store, serve_bound};
use converge_watch::ServerAddress;
use converge_watch::proto::entities_client::EntitiesClient;
use converge_watch::proto::watch_event::Type;
use converge_watch::proto::{
    GetRequest, ListRequest, PatchStatusRequest, PutBatchRequest, PutRequest, WatchEvent,
    WatchRequest,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(10);

/// One server on a private socket and redb file inside `dir`.
struct TestServer {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    async fn start(dir: &Path, history_limit: u64) -> Self {
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

    async fn client(&self) -> EntitiesClient<Channel> {
        let socket = self.socket.clone();
        let channel = Endpoint::from_static("http://converge.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect");
        EntitiesClient::new(channel)
    }

    /// Triggers shutdown and waits for the server to finish it.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("shutdown in time");
        done.expect("server task").expect("clean shutdown");
    }
}

fn sandbox(node: &str) -> Value {
    json!({"node": node, "containers": [{"name": "app", "image": "busybox"}]})
}

fn put(id: &str, spec: &Value, expected: Option<i64>) -> PutRequest {
    PutRequest {
        id: id.into(),
        spec_json: serde_json::to_vec(spec).expect("json"),
        expected_revision: expected,
    }
}

fn watch(kind: &str, node: &str, include_unassigned: bool, from: i64) -> WatchRequest {
    WatchRequest {
        kind: kind.into(),
        node: node.into(),
        include_unassigned,
        from_revision: from,
    }
}

async fn next(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    let item = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event in time");
    item.expect("stream healthy").expect("stream still open")
}

/// The next event that is not PROGRESS.
async fn next_change(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    loop {
        let event = next(stream).await;
        if event.r#type != Type::Progress as i32 {
            return event;
        }
    }
}

fn id_of(event: &WatchEvent) -> &str {
    event.entity.as_ref().map_or("", |e| e.id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_field_and_store_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let mut client = server.client().await;

    let bad_port =
        json!({"containers": [{"name": "app", "image": "busybox", "ports": [{"port": 0}]}]});
    let err = client
        .put(put("sandbox/web", &bad_port, None))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("sandbox/web: spec.containers[0].ports[0].port: "),
        "{}",
        err.message()
    );

    let err = client
        .put(put("sandbox/Web", &sandbox(""), None))
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("invalid name"), "{}", err.message());

    let garbage = PutRequest {
        id: "sandbox/web".into(),
        spec_json: b"{nope".to_vec(),
        expected_revision: None,
    };
    let err = client.put(garbage).await.expect_err("not json");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("sandbox/web: spec: "),
        "{}",
        err.message()
    );

    let batch = PutBatchRequest {
        puts: vec![
            put("sandbox/good", &sandbox(""), None),
            put("sandbox/bad", &bad_port, None),
        ],
    };
    let err = client.put_batch(batch).await.expect_err("one bad op");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("sandbox/bad: spec.containers[0]"),
        "{}",
        err.message()
    );

    let listing = client
        .list(ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        listing.entities.is_empty(),
        "nothing stored: {:?}",
        listing.entities
    );
    assert_eq!(listing.revision, 0);
    let err = client
        .get(GetRequest {
            id: "sandbox/good".into(),
        })
        .await
        .expect_err("absent");
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writes_are_aborted_with_the_current_revision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let mut client = server.client().await;
    let created = client
        .put(put("sandbox/web", &sandbox(""), Some(0)))
        .await
        .expect("create");
    let r1 = created.into_inner().entity.expect("entity").revision;

    let status = |s: Value, expected| PatchStatusRequest {
        id: "sandbox/web".into(),
        status_json: serde_json::to_vec(&s).expect("json"),
        expected_revision: expected,
    };
    let patched = client
        .patch_status(status(json!({"phase": "running"}), r1))
        .await
        .expect("patch");
    let r2 = patched.into_inner().entity.expect("entity").revision;
    assert!(r2 > r1);

    let err = client
        .patch_status(status(json!({"phase": "dead"}), r1))
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::Aborted);
    let current = err
        .metadata()
        .get("x-converge-current-revision")
        .expect("metadata");
    assert_eq!(current.to_str().expect("ascii"), r2.to_string());
    assert!(
        err.message().contains(&format!("expected revision {r1}")),
        "{}",
        err.message()
    );

    let err = client
        .patch_status(status(json!(["not", "an", "object"]), r2))
        .await
        .expect_err("array");
    assert_eq!(err.code(), Code::InvalidArgument);
    let huge = json!({"message": "x".repeat(1024 * 1024)});
    let err = client
        .patch_status(status(huge, r2))
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = client
        .put(put("sandbox/web", &sandbox("n"), Some(0)))
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Code::Aborted);
    let got = client
        .get(GetRequest {
            id: "sandbox/web".into(),
        })
        .await
        .expect("get")
        .into_inner();
    let entity = got.entity.expect("entity");
    assert_eq!(entity.revision, r2);
    assert_eq!(
        serde_json::from_slice::<Value>(&entity.status_json).expect("json"),
        json!({"phase": "running"})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_filtered_watch_sees_sandboxes_arrive_and_leave_its_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let mut client = server.client().await;
    let mut mine = client
        .watch(watch("sandbox", "node-a", false, 0))
        .await
        .expect("watch")
        .into_inner();
    let mut with_unassigned = client
        .watch(watch("sandbox", "node-a", true, 0))
        .await
        .expect("watch")
        .into_inner();

    client
        .put(put("sandbox/x", &sandbox("node-a"), None))
        .await
        .expect("x");
    client
        .put(put("sandbox/y", &sandbox("node-b"), None))
        .await
        .expect("y");
    client
        .put(put("sandbox/z", &sandbox(""), None))
        .await
        .expect("z");
    let artifact = json!({"image": "busybox", "manifest": format!("sha256:{}", "a".repeat(64))});
    client
        .put(put("artifact/img", &artifact, None))
        .await
        .expect("artifact");
    client
        .put(put("sandbox/x", &sandbox("node-b"), None))
        .await
        .expect("x moves off");
    client
        .put(put("sandbox/y", &sandbox("node-a"), None))
        .await
        .expect("y moves on");

    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next_change(&mut mine).await;
        seen.push((e.r#type, id_of(&e).to_string()));
    }
    let want = [
        (Type::Put as i32, "sandbox/x".to_string()),
        (Type::Delete as i32, "sandbox/x".to_string()),
        (Type::Put as i32, "sandbox/y".to_string()),
    ];
    assert_eq!(seen, want);

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(id_of(&next_change(&mut with_unassigned).await).to_string());
    }
    assert_eq!(seen, ["sandbox/x", "sandbox/z", "sandbox/x", "sandbox/y"]);

    let list = ListRequest {
        kind: "sandbox".into(),
        node: "node-a".into(),
        include_unassigned: false,
    };
    let listing = client.list(list).await.expect("list").into_inner();
    let ids: Vec<_> = listing.entities.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["sandbox/y"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_gets_compacted_and_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), 5).await;
    let mut client = server.client().await;
    for n in 0..20 {
        let spec = json!({"containers": [{"name": "app", "image": format!("busybox:{n}")}]});
        client
            .put(put("sandbox/web", &spec, None))
            .await
            .expect("put");
    }
    let mut stream = client
        .watch(watch("", "", false, 1))
        .await
        .expect("watch")
        .into_inner();
    let event = next(&mut stream).await;
    assert_eq!(event.r#type, Type::Compacted as i32);
    assert_eq!(event.compact_revision, 16);
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("in time");
    assert!(
        matches!(end, Ok(None)),
        "stream should end after COMPACTED: {end:?}"
    );

    let mut stream = client
        .watch(watch("", "", false, 16))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next(&mut stream).await.revision, 16);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_private_to_its_owner() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let mode = std::fs::metadata(&server.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_file_keeps_entities_and_revisions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let mut client = server.client().await;
    let first = client
        .put(put("sandbox/web", &sandbox("n"), None))
        .await
        .expect("put");
    let first = first.into_inner().entity.expect("entity");
    drop(client);
    let socket = server.socket.clone();
    server.stop().await;
    assert!(!socket.exists(), "socket file removed at shutdown");

    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let mut client = server.client().await;
    let got = client
        .get(GetRequest {
            id: "sandbox/web".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.entity.as_ref(), Some(&first));
    let next = client
        .put(put("sandbox/other", &sandbox("n"), None))
        .await
        .expect("put");
    assert_eq!(
        next.into_inner().entity.expect("entity").revision,
        first.revision + 1
    );
    let mut stream = client
        .watch(watch("", "", false, 1))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        id_of(&next_change(&mut stream).await),
        "sandbox/web",
        "history kept"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_open_watch_streams_and_completes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let mut client = server.client().await;
    let mut stream = client
        .watch(watch("", "", false, 0))
        .await
        .expect("watch")
        .into_inner();
    client
        .put(put("sandbox/web", &sandbox(""), None))
        .await
        .expect("put");
    assert_eq!(id_of(&next_change(&mut stream).await), "sandbox/web");
    let socket = server.socket.clone();
    server.stop().await;
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream ends in time");
    assert!(
        !matches!(end, Ok(Some(_))),
        "no more events after shutdown: {end:?}"
    );
    assert!(!socket.exists(), "socket file removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_live_socket_is_refused_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let taken = listen::bind(&ServerAddress::Unix(server.socket.clone())).await;
    assert!(
        matches!(taken, Err(listen::ListenError::InUse { .. })),
        "{taken:?}"
    );
    server.stop().await;

    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let bound = listen::bind(&ServerAddress::Unix(stale.clone()))
        .await
        .expect("stale replaced");
    drop(bound);

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"keep me").expect("write");
    let refused = listen::bind(&ServerAddress::Unix(file.clone())).await;
    assert!(
        matches!(refused, Err(listen::ListenError::NotASocket { .. })),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_also_listens_on_loopback_tcp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&StoreUrl::Redb(dir.path().join("e.redb")), 100)
        .await
        .expect("store");
    let bound = listen::bind(&"tcp:127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let listen::Bound::Tcp(listener) = &bound else {
        panic!("wanted a TCP listener")
    };
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_bound(store, bound, async move {
        let _ = stopped.await;
    }));
    let mut client = EntitiesClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    client
        .put(put("sandbox/web", &sandbox(""), None))
        .await
        .expect("put");
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .expect("in time")
        .expect("task")
        .expect("clean");
}

#[test]
fn store_urls_parse_and_print_back() {
    let redb: StoreUrl = "redb:/tmp/x.redb".parse().expect("redb");
    assert_eq!(redb, StoreUrl::Redb("/tmp/x.redb".into()));
    let etcd: StoreUrl = "etcd:http://a:2379,http://b:2379".parse().expect("etcd");
    assert_eq!(
        etcd,
        StoreUrl::Etcd(vec!["http://a:2379".into(), "http://b:2379".into()])
    );
    for url in [redb, etcd] {
        assert_eq!(
            url.to_string().parse::<StoreUrl>().expect("round trip"),
            url
        );
    }
    for bad in ["", "redb:", "etcd:", "etcd:a,,b", "sqlite:x", "/tmp/x.redb"] {
        assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_held_by_a_running_server_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(dir.path(), DEFAULT_HISTORY_LIMIT).await;
    let url = StoreUrl::Redb(dir.path().join("entities.redb"));
    let err = open_store(&url, 10)
        .await
        .err()
        .expect("second open refused");
    assert!(matches!(err, ServerError::OpenStore { .. }), "{err}");
    server.stop().await;
    open_store(&url, 10)
        .await
        .expect("free again after shutdown");
}
