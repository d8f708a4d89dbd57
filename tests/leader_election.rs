//! Leader election on a private etcd: exactly one of two campaigners leads; a crashed
//! leader (renewals stop) is replaced within about the TTL and a resigned one at once; the
//! fencing revision grows; a delete fenced by an old term is refused; no two terms ever
//! run their critical section at once. Also two `converge server` processes on a 3-member
//! cluster: blob GC runs on exactly one, and moves to the other when it is killed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge::server::leader::{
    EtcdLeadership, LeaderError, LeaderTerm, Leadership, LocalLeadership, run_while_leader,
};
use converge::server::store::etcd::{EtcdConfig, EtcdStore};
use converge::server::store::{Fence, PutOp, Store, StoreError};
use converge_testkit::etcd::EtcdCluster;
use converge_testkit::{KillOnDrop, terminate_and_wait, unique_name};
use converge_watch::{EntityId, Kind};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);

async fn election(cluster: &EtcdCluster, prefix: &str, who: &str) -> EtcdLeadership {
    let client = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .expect("connect to etcd");
    EtcdLeadership::new(client, prefix, "test-task", who, TTL).expect("election")
}

/// Campaigns in the background; the term arrives on the returned channel.
fn campaign(
    election: EtcdLeadership,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Option<LeaderTerm>> {
    tokio::spawn(async move { election.campaign(&stop).await })
}

async fn elected(
    task: &mut tokio::task::JoinHandle<Option<LeaderTerm>>,
    within: Duration,
) -> LeaderTerm {
    tokio::time::timeout(within, task)
        .await
        .expect("elected in time")
        .expect("campaign task")
        .expect("a term")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_leads_and_a_crashed_leader_is_replaced_with_a_larger_fence() {
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    let prefix = format!("/{}", unique_name("leader"));
    let a = election(&cluster, &prefix, "a").await;
    let b = election(&cluster, &prefix, "b").await;
    let stop = CancellationToken::new();
    let mut first = campaign(a.clone(), stop.clone());
    let term_a = elected(&mut first, WAIT).await;
    let mut second = campaign(b.clone(), stop.clone());
    // B waits while A holds the key.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "two leaders at once");
    let (holder, fencing) = a.holder().await.expect("holder").expect("a leader");
    assert_eq!((holder.as_str(), fencing), ("a", term_a.fencing));
    a.check(&term_a).await.expect("A's term holds");

    // An entity and A's fence: a fenced delete by a live term would succeed.
    let store = EtcdStore::connect(EtcdConfig {
        prefix: prefix.clone(),
        ..EtcdConfig::new(cluster.endpoints())
    })
    .await
    .expect("store");
    let id = EntityId::new(Kind::Sandbox, "fenced").expect("id");
    store
        .put(vec![PutOp {
            id: id.clone(),
            spec: json!({"containers": []}),
            expected_revision: None,
        }])
        .await
        .expect("put");
    let stale_fence = term_a.fence().cloned().expect("etcd terms carry a fence");
    assert_eq!(stale_fence.key, a.key());

    // A "crashes": its renewals stop (the term is dropped without resigning), so its
    // lease expires after the TTL and B takes over.
    term_a.lost.cancel();
    let term_b = elected(&mut second, TTL * 4 + Duration::from_secs(5)).await;
    assert!(
        term_b.fencing > term_a.fencing,
        "fencing grows: {} then {}",
        term_a.fencing,
        term_b.fencing
    );
    assert!(matches!(
        a.check(&term_a).await,
        Err(LeaderError::Lost { .. })
    ));
    b.check(&term_b).await.expect("B's term holds");

    // The old term's fence is refused by the store and deletes nothing.
    match store.delete_fenced(&id, None, Some(&stale_fence)).await {
        Err(StoreError::FenceLost { fencing, .. }) => assert_eq!(fencing, term_a.fencing),
        other => panic!("wanted FenceLost, got {other:?}"),
    }
    assert!(store.get(&id).await.expect("get").is_some(), "still there");
    // A made-up fence on a key that never existed is refused too.
    let bogus = Fence {
        key: format!("{prefix}/leader/nobody"),
        fencing: 1,
    };
    assert!(matches!(
        store.delete_fenced(&id, None, Some(&bogus)).await,
        Err(StoreError::FenceLost { .. })
    ));
    // The live term's fence deletes.
    store
        .delete_fenced(&id, None, term_b.fence())
        .await
        .expect("fenced delete by the leader");
    assert!(store.get(&id).await.expect("get").is_none());
    b.resign(&term_b).await;
    assert!(
        b.holder().await.expect("holder").is_none(),
        "resign frees the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigned_leader_is_replaced_at_once() {
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    let prefix = format!("/{}", unique_name("resign"));
    let a = election(&cluster, &prefix, "a").await;
    let b = election(&cluster, &prefix, "b").await;
    let stop = CancellationToken::new();
    let mut first = campaign(a.clone(), stop.clone());
    let term_a = elected(&mut first, WAIT).await;
    let mut second = campaign(b.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "two leaders at once");
    a.resign(&term_a).await;
    assert!(term_a.lost.is_cancelled(), "a resigned term is over");
    // Well inside the TTL: the key's deletion wakes B.
    let term_b = elected(&mut second, WAIT).await;
    assert!(term_b.fencing > term_a.fencing);
    // A stopped campaign returns None and leaves nothing behind.
    let stopped = CancellationToken::new();
    let mut third = campaign(a.clone(), stopped.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stopped.cancel();
    let none = tokio::time::timeout(WAIT, &mut third)
        .await
        .expect("stops in time")
        .expect("task");
    assert!(none.is_none());
    let (holder, _) = b.holder().await.expect("holder").expect("leader");
    assert_eq!(holder, "b");
    b.resign(&term_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_terms_run_their_critical_section_at_once() {
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    let prefix = format!("/{}", unique_name("critical"));
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let terms: Arc<Mutex<Vec<LeaderTerm>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut loops = Vec::new();
    for who in ["a", "b"] {
        let leadership: Arc<dyn Leadership> = Arc::new(election(&cluster, &prefix, who).await);
        let (inside, most, terms) = (inside.clone(), most.clone(), terms.clone());
        let checker = leadership.clone();
        loops.push(tokio::spawn(run_while_leader(
            leadership,
            stop.clone(),
            move |term, until| {
                let (inside, most, terms, checker) =
                    (inside.clone(), most.clone(), terms.clone(), checker.clone());
                async move {
                    terms.lock().expect("lock").push(term.clone());
                    while !until.is_cancelled() {
                        if checker.check(&term).await.is_ok() {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            inside.fetch_sub(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            },
        )));
    }
    // Crash the current leader twice; each time the other takes over.
    for handovers in 1..=3 {
        let deadline = Instant::now() + WAIT;
        let term = loop {
            if let Some(term) = terms.lock().expect("lock").get(handovers - 1).cloned() {
                break term;
            }
            assert!(Instant::now() < deadline, "no term {handovers}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if handovers < 3 {
            term.lost.cancel();
        }
    }
    stop.cancel();
    for l in loops {
        tokio::time::timeout(WAIT, l)
            .await
            .expect("loops stop")
            .expect("loop task");
    }
    let fencings: Vec<i64> = terms
        .lock()
        .expect("lock")
        .iter()
        .map(|t| t.fencing)
        .collect();
    assert!(
        fencings.windows(2).all(|w| w[0] < w[1]),
        "fencing revisions grow: {fencings:?}"
    );
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two inside at once");
}

#[tokio::test]
async fn a_single_server_always_leads() {
    let local = LocalLeadership::new("cluster").expect("local");
    let term = local
        .campaign(&CancellationToken::new())
        .await
        .expect("elected at once");
    assert!(term.fence().is_none());
    local.check(&term).await.expect("holds");
    local.resign(&term).await;
    assert!(local.check(&term).await.is_err());
    let stopped = CancellationToken::new();
    stopped.cancel();
    assert!(local.campaign(&stopped).await.is_none());
    assert!(LocalLeadership::new("Bad/Task").is_err());
}

/// A `converge server` child process on etcd, with its registry and artifact store in
/// `dir`; killed by pid on drop.
struct ServerProcess {
    _child: KillOnDrop,
    dir: PathBuf,
}

impl ServerProcess {
    fn start(dir: &Path, endpoints: &[String]) -> Self {
        std::fs::create_dir_all(dir).expect("server dir");
        let registry = converge_testkit::free_loopback_addr().expect("free port");
        let child = Command::new(env!("CARGO_BIN_EXE_converge"))
            .arg("server")
            .arg("--store")
            .arg(format!("etcd:{}", endpoints.join(",")))
            .arg("--listen")
            .arg(format!("unix:{}", dir.join("entity.sock").display()))
            .arg("--registry")
            .arg(registry.to_string())
            .arg("--artifact-dir")
            .arg(dir.join("artifacts"))
            .args([
                "--gc-interval",
                "1s",
                "--blob-grace",
                "1s",
                "--leader-ttl",
                "3s",
            ])
            .env("RUST_LOG", "converge=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn converge server");
        Self {
            _child: KillOnDrop::new(child),
            dir: dir.to_path_buf(),
        }
    }

    fn swept(&self) -> bool {
        self.dir.join("gc-last-pass.json").exists()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gc_runs_on_one_server_and_moves_when_it_is_killed() {
    let cluster = EtcdCluster::start(3).await.expect("start etcd");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut servers = vec![
        ServerProcess::start(&dir.path().join("s1"), &cluster.endpoints()),
        ServerProcess::start(&dir.path().join("s2"), &cluster.endpoints()),
    ];
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        if let Some(i) = servers.iter().position(ServerProcess::swept) {
            break i;
        }
        assert!(Instant::now() < deadline, "no server ran blob GC");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Several GC intervals later the other one still has not swept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!servers[1 - leader].swept(), "blob GC ran on both servers");
    let killed = servers.remove(leader);
    drop(killed);
    let deadline = Instant::now() + WAIT;
    while !servers[0].swept() {
        assert!(
            Instant::now() < deadline,
            "blob GC did not move to the surviving server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_on_the_store_client_outlives_its_request_timeout() {
    // The entity store's etcd client has a 10 s request timeout; the lease keep-alive and the
    // key watch of a term are long-lived streams on that client and must keep the term.
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    let store = EtcdStore::connect(EtcdConfig::new(cluster.endpoints()))
        .await
        .expect("store");
    let election = EtcdLeadership::new(
        store.etcd_client(),
        store.prefix(),
        "long-term",
        "only",
        TTL,
    )
    .expect("election");
    let term = election
        .campaign(&CancellationToken::new())
        .await
        .expect("elected");
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert!(
        term.is_alive(),
        "the term was lost while renewals should succeed"
    );
    election.check(&term).await.expect("still the leader");
    election.resign(&term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_hands_leadership_over_at_once() {
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    let dir = tempfile::tempdir().expect("temp dir");
    // A lease far longer than the test: only a resign can free the key in time.
    let start = |name: &str| {
        let socket = dir.path().join(format!("{name}.sock"));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
            .arg("server")
            .arg("--no-registry")
            .arg("--store")
            .arg(format!("etcd:{}", cluster.endpoints().join(",")))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--leader-ttl", "60s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn converge server");
        (child, socket.display().to_string())
    };
    let mut servers = vec![start("s1"), start("s2")];
    // Reads the `cluster` election's key (never campaigns).
    let watcher = EtcdLeadership::new(
        etcd_client::Client::connect(cluster.endpoints(), None)
            .await
            .expect("connect"),
        "/converge",
        "cluster",
        "watcher",
        TTL,
    )
    .expect("election");
    let holder = || async {
        watcher
            .holder()
            .await
            .expect("read the leader key")
            .map(|(identity, _)| identity)
    };
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        if let Some(identity) = holder().await
            && let Some(i) = servers.iter().position(|(_, s)| identity.ends_with(s))
        {
            break i;
        }
        assert!(Instant::now() < deadline, "no server was elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut child, socket) = servers.remove(leader);
    let status = terminate_and_wait(&mut child, WAIT)
        .await
        .expect("exit in time");
    assert!(status.success(), "{status}");
    // The lease would last a minute: the key is already free or the other server's.
    let now = holder().await;
    assert!(
        now.as_deref()
            .is_none_or(|identity| !identity.ends_with(&socket)),
        "the stopped server still holds the key: {now:?}"
    );
    let other = &servers[0].1;
    let deadline = Instant::now() + WAIT;
    while !holder()
        .await
        .is_some_and(|identity| identity.ends_with(other))
    {
        assert!(
            Instant::now() < deadline,
            "the other server was not elected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_gives_up_its_term() {
    let mut cluster = EtcdCluster::start(1).await.expect("start etcd");
    let prefix = format!("/{}", unique_name("cutoff"));
    let a = election(&cluster, &prefix, "a").await;
    let term = a
        .campaign(&CancellationToken::new())
        .await
        .expect("elected");
    cluster.kill_member(0).expect("kill the only member");
    // No renewal can be acknowledged any more: the term ends on its own (at 2/3 of the
    // TTL, before etcd could have expired the lease), and nothing confirms it meanwhile.
    tokio::time::timeout(WAIT, term.lost.cancelled())
        .await
        .expect("the term ends without etcd");
    assert!(a.check(&term).await.is_err());
}
