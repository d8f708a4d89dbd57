//! Dead-sandbox cleanup: a sweep deletes only sandboxes dead for longer than the horizon
//! (not running ones, not recently dead ones, not failed ones), dry-run deletes nothing and
//! plans `delete sandbox/x: dead for ... > horizon ...`; the background loop of `converge up`
//! deletes a dead sandbox once its horizon passed; `converge server` on etcd does it as the
//! elected leader.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use converge::daemon::dead_sandboxes::{spawn_local_cleanup, sweep_dead_sandboxes};
use converge::server::leader::{Leadership, LocalLeadership};
use converge::server::store::{PutOp, RedbStore, Store};
use converge_reconcilers::engine::{Executor, Verb};
use converge_testkit::etcd::EtcdCluster;
use converge_testkit::unique_name;
use converge_watch::{Entity, EntityClient, EntityId, Kind, ServerAddress};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn id(name: &str) -> EntityId {
    EntityId::new(Kind::Sandbox, name).expect("id")
}

async fn sandbox(store: &dyn Store, name: &str, phase: &str) -> Entity {
    let put = store
        .put(vec![PutOp {
            id: id(name),
            spec: json!({"containers": [{"name": "app", "image": "busybox"}]}),
            expected_revision: None,
        }])
        .await
        .expect("put");
    store
        .patch_status(&id(name), json!({"phase": phase}), put[0].revision)
        .await
        .expect("status")
}

async fn names(store: &dyn Store) -> Vec<String> {
    let listing = store.list(Some(Kind::Sandbox)).await.expect("list");
    listing
        .entities
        .iter()
        .map(|e| e.id.name().to_string())
        .collect()
}

async fn local_term() -> converge::server::leader::LeaderTerm {
    LocalLeadership::new("cluster")
        .expect("local")
        .campaign(&CancellationToken::new())
        .await
        .expect("term")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_deletes_only_sandboxes_dead_past_the_horizon() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path().join("entities.redb"), 1000)
        .await
        .expect("store");
    let old = sandbox(&store, "old-dead", "dead").await;
    sandbox(&store, "running", "running").await;
    sandbox(&store, "failed", "failed").await;
    // Written later than `old`, by a margin the clock shows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recent = sandbox(&store, "recent-dead", "dead").await;
    let gap = (recent.updated_at - old.updated_at)
        .to_std()
        .expect("recent is later");
    // At `now`, old has been dead for more than the horizon, recent for less.
    let horizon = gap / 2;
    let now: DateTime<Utc> = recent.updated_at + chrono::Duration::from_std(gap / 4).expect("fits");
    let term = local_term().await;

    let before = store
        .list(Some(Kind::Sandbox))
        .await
        .expect("list")
        .entities;
    let dry = Executor::dry_run();
    let report = sweep_dead_sandboxes(&store, &term, &dry, now, horizon)
        .await
        .expect("dry sweep");
    let after = store
        .list(Some(Kind::Sandbox))
        .await
        .expect("list")
        .entities;
    assert_eq!(before, after, "dry-run changes nothing");
    assert_eq!(report.deleted, 0);
    let plan = dry.plan();
    assert_eq!(plan.len(), 1, "{}", plan.to_table());
    let action = &plan.actions()[0];
    assert_eq!(action.verb, Verb::Delete);
    assert_eq!(action.target, "sandbox/old-dead");
    assert!(
        action.reason.starts_with("dead for ") && action.reason.contains("> horizon"),
        "{}",
        action.reason
    );

    let report = sweep_dead_sandboxes(&store, &term, &Executor::real(), now, horizon)
        .await
        .expect("sweep");
    assert_eq!(report.deleted, 1);
    assert_eq!(names(&store).await, ["failed", "recent-dead", "running"]);

    // A term that is over deletes nothing.
    let later = now + chrono::Duration::hours(2);
    LocalLeadership::new("cluster")
        .expect("local")
        .resign(&term)
        .await;
    assert!(
        sweep_dead_sandboxes(&store, &term, &Executor::real(), later, horizon)
            .await
            .is_err()
    );
    assert_eq!(names(&store).await, ["failed", "recent-dead", "running"]);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_came_back_since_it_was_listed_is_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path().join("entities.redb"), 1000)
        .await
        .expect("store");
    let dead = sandbox(&store, "revived", "dead").await;
    // Revived between listing and deleting: the delete is conditional on the listed
    // revision, which is what a concurrent writer changes.
    store
        .patch_status(&id("revived"), json!({"phase": "running"}), dead.revision)
        .await
        .expect("revive");
    let stale = store
        .delete_fenced(&id("revived"), Some(dead.revision), None)
        .await;
    assert!(stale.is_err(), "{stale:?}");
    assert_eq!(names(&store).await, ["revived"]);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cleanup_deletes_a_dead_sandbox_once_its_horizon_passed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open(dir.path().join("entities.redb"), 1000)
            .await
            .expect("store"),
    );
    sandbox(store.as_ref(), "dead", "dead").await;
    sandbox(store.as_ref(), "running", "running").await;
    let stop = CancellationToken::new();
    spawn_local_cleanup(
        store.clone(),
        Duration::from_millis(300),
        false,
        stop.clone(),
    );
    let deadline = Instant::now() + WAIT;
    while names(store.as_ref()).await.contains(&"dead".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the dead sandbox was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(names(store.as_ref()).await, ["running"]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_local_cleanup_deletes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(
        RedbStore::open(dir.path().join("entities.redb"), 1000)
            .await
            .expect("store"),
    );
    sandbox(store.as_ref(), "dead", "dead").await;
    let stop = CancellationToken::new();
    spawn_local_cleanup(
        store.clone(),
        Duration::from_millis(100),
        true,
        stop.clone(),
    );
    // Many sweep intervals.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(names(store.as_ref()).await, ["dead"]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converge_server_on_etcd_deletes_dead_sandboxes_as_leader() {
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
        .args(["--dead-sandbox-horizon", "1s", "--leader-ttl", "2s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn converge server");
    let address = ServerAddress::Unix(socket);
    let deadline = Instant::now() + WAIT;
    let client = loop {
        if let Ok(client) = EntityClient::connect(&address).await
            && client.get(&id("probe")).await.is_ok()
        {
            break client;
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dead_name = unique_name("dead");
    let live_name = unique_name("live");
    for (name, phase) in [(&dead_name, "dead"), (&live_name, "running")] {
        let put = client
            .put(
                &id(name),
                &json!({"containers": [{"name": "app", "image": "busybox"}]}),
                None,
            )
            .await
            .expect("put");
        client
            .patch_status(&id(name), &json!({"phase": phase}), put.revision)
            .await
            .expect("status");
    }
    let deadline = Instant::now() + WAIT;
    while client.get(&id(&dead_name)).await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "the dead sandbox was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        client.get(&id(&live_name)).await.expect("get").is_some(),
        "a running sandbox is kept"
    );
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert!(status.success(), "{status}");
}
