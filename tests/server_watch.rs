//! Watches through the entity server: node filtering (moves on and off a node),
//! compaction, and streams ending at graceful shutdown.

mod server_support;

use converge::server::store::DEFAULT_HISTORY_LIMIT;
use converge_watch::proto::ListRequest;
use converge_watch::proto::watch_event::Type;
use serde_json::json;
use server_support::{TestServer, WAIT, id_of, next, next_change, put, sandbox, watch};

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
