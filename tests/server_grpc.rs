//! The entity server over a private unix socket: validation, conflicts, restarts, TCP,
//! and store URLs.

mod server_support;

use converge::server::store::DEFAULT_HISTORY_LIMIT;
use converge::server::{ServerError, StoreUrl, listen, open_store, serve_bound};
use converge_watch::proto::entities_client::EntitiesClient;
use converge_watch::proto::{
    GetRequest, ListRequest, PatchStatusRequest, PutBatchRequest, PutRequest,
};
use serde_json::{Value, json};
use server_support::{TestServer, WAIT, id_of, next_change, put, sandbox, watch};
use tokio::sync::oneshot;
use tonic::Code;

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
