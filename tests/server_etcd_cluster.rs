//! Two entity servers on one private 3-member etcd cluster: writes through one reach
//! watchers on the other, and both keep working with one etcd member killed. Also
//! `converge server --store etcd:...` as a real process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use converge::server::store::DEFAULT_HISTORY_LIMIT;
use converge::server::{ServerError, StoreUrl, listen, open_store, serve_bound};
use converge_testkit::etcd::EtcdCluster;
use converge_testkit::unique_name;
use converge_watch::{ClientError, Entity, EntityClient, EntityId, Kind, RawWatchEvent};
use converge_watch::{RawWatchStream, ServerAddress};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// One in-process entity server on the etcd cluster, listening on a socket in `dir`.
struct TestServer {
    address: ServerAddress,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    async fn start(dir: &Path, name: &str, endpoints: Vec<String>) -> Self {
        let store = open_store(&StoreUrl::Etcd(endpoints), DEFAULT_HISTORY_LIMIT)
            .await
            .expect("open the etcd store");
        let address = ServerAddress::Unix(dir.join(format!("{name}.sock")));
        let bound = listen::bind(&address).await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_bound(store, bound, async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> EntityClient {
        EntityClient::connect(&self.address)
            .await
            .expect("connect to the server")
    }

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

fn spec(version: u32) -> Value {
    json!({"containers": [{"name": "app", "image": format!("busybox:{version}")}]})
}

fn new_id() -> EntityId {
    EntityId::new(Kind::Sandbox, unique_name("etcd-srv")).expect("id")
}

/// Puts through `client`, retrying while etcd elects a new leader (the server then answers
/// `Unavailable`; an unconditional put of the same spec is safe to repeat).
async fn put_through_elections(client: &EntityClient, id: &EntityId, version: u32) -> Entity {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.put(id, &spec(version), None).await {
            Ok(entity) => return entity,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("put of {id} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("put of {id} kept failing: {e}"),
        }
    }
}

/// The next change on a watch, skipping progress notices.
async fn next_change(events: &mut RawWatchStream) -> RawWatchEvent {
    loop {
        let item = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("a watch event in time")
            .expect("the watch goes on");
        match item {
            Ok(RawWatchEvent::Progress { .. }) => continue,
            Ok(event) => return event,
            Err(e) => panic!("watch failed: {e}"),
        }
    }
}

async fn expect_put(events: &mut RawWatchStream, want: &Entity) {
    match next_change(events).await {
        RawWatchEvent::Put(got) => {
            assert_eq!((&got.id, got.revision), (&want.id, want.revision));
            assert_eq!(got.spec, want.spec);
        }
        other => panic!(
            "wanted the put of {} at {}, got {other:?}",
            want.id, want.revision
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_server_reaches_a_watcher_on_the_other() {
    let cluster = EtcdCluster::start(3).await.expect("start etcd");
    let dir = tempfile::tempdir().expect("temp dir");
    let a = TestServer::start(dir.path(), "a", cluster.endpoints()).await;
    let b = TestServer::start(dir.path(), "b", cluster.endpoints()).await;
    let (client_a, client_b) = (a.client().await, b.client().await);
    let filter = converge_watch::ListFilter {
        kind: Some(Kind::Sandbox),
        ..Default::default()
    };
    let mut events = client_b.watch_raw(&filter, 0).await.expect("watch on b");

    let id = new_id();
    let created = client_a
        .put(&id, &spec(1), Some(0))
        .await
        .expect("put on a");
    expect_put(&mut events, &created).await;
    let seen = client_b.get(&id).await.expect("get on b").expect("exists");
    assert_eq!(seen.revision, created.revision);

    let deleted = client_b
        .delete(&id, Some(created.revision))
        .await
        .expect("delete on b");
    assert_eq!(deleted.revision, created.revision);
    match next_change(&mut events).await {
        RawWatchEvent::Delete { entity, revision } => {
            assert_eq!(entity.id, id);
            assert!(revision > created.revision);
        }
        other => panic!("wanted the delete of {id}, got {other:?}"),
    }
    match client_a.get(&id).await {
        Ok(None) => {}
        other => panic!("deleted through b, still on a: {other:?}"),
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_watches_continue_with_one_member_killed() {
    let mut cluster = EtcdCluster::start(3).await.expect("start etcd");
    let dir = tempfile::tempdir().expect("temp dir");
    let a = TestServer::start(dir.path(), "a", cluster.endpoints()).await;
    let b = TestServer::start(dir.path(), "b", cluster.endpoints()).await;
    let (client_a, client_b) = (a.client().await, b.client().await);
    let mut events = client_b
        .watch_raw(&converge_watch::ListFilter::default(), 0)
        .await
        .expect("watch on b");

    let mut written = Vec::new();
    for version in 0..3 {
        written.push(put_through_elections(&client_a, &new_id(), version).await);
    }
    // Killing the leader forces an election while the servers keep writing and watching.
    let leader = cluster.leader().await.expect("a leader");
    cluster.kill_member(leader).expect("kill the leader");
    for version in 3..6 {
        written.push(put_through_elections(&client_a, &new_id(), version).await);
        written.push(put_through_elections(&client_b, &new_id(), version).await);
    }
    for want in &written {
        expect_put(&mut events, want).await;
    }
    let (listed, _) = client_a
        .list(&converge_watch::ListFilter::default())
        .await
        .expect("list on a");
    assert_eq!(listed.len(), written.len());

    cluster
        .restart_member(leader)
        .await
        .expect("restart the old leader");
    let after = put_through_elections(&client_b, &new_id(), 9).await;
    expect_put(&mut events, &after).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converge_server_runs_on_an_etcd_store() {
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("entity.sock");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("server")
        .arg("--no-registry")
        .arg("--store")
        .arg(format!("etcd:{}", cluster.endpoints().join(",")))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn converge server");
    let address = ServerAddress::Unix(socket);
    let deadline = tokio::time::Instant::now() + WAIT;
    let client = loop {
        if let Ok(client) = EntityClient::connect(&address).await
            && client.get(&new_id()).await.is_ok()
        {
            break client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = new_id();
    let created = client.put(&id, &spec(1), None).await.expect("put");
    let stale = client.put(&id, &spec(2), Some(created.revision + 5)).await;
    assert!(
        matches!(stale, Err(ClientError::Conflict { .. })),
        "{stale:?}"
    );
    let got = client.get(&id).await.expect("get").expect("exists");
    assert_eq!(got.revision, created.revision);
    let status = converge_testkit::terminate_and_wait(&mut child, WAIT)
        .await
        .expect("exit in time");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_unreachable_etcd_refuses_to_start() {
    let port = converge_testkit::free_loopback_port().expect("free port");
    let url = StoreUrl::Etcd(vec![format!("http://127.0.0.1:{port}")]);
    match open_store(&url, DEFAULT_HISTORY_LIMIT).await {
        Err(ServerError::OpenStore { url: shown, .. }) => {
            assert!(shown.contains(&port.to_string()))
        }
        Err(other) => panic!("wanted OpenStore, got {other}"),
        Ok(_) => panic!("opened a store on nothing"),
    }
}
