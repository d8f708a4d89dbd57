//! `converge server` as a real process: a SIGKILL loses no acknowledged write, and SIGTERM
//! shuts it down cleanly (watch streams end, socket file removed, exit status 0).

mod server_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use converge_testkit::terminate_and_wait;
use converge_watch::proto::entities_client::EntitiesClient;
use converge_watch::proto::watch_event::Type;
use converge_watch::proto::{GetRequest, ListRequest, PutRequest, WatchRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use server_support::connect_unix;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

/// Starts `converge server` on a redb file and socket inside `dir`, and waits until it answers.
async fn start(dir: &Path) -> (Child, EntitiesClient<Channel>) {
    let socket = dir.join("entity.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("server")
        .args(["--registry", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("redb:{}", dir.join("entities.redb").display()))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--history-limit")
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn converge server");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut client) = connect_unix(&socket).await
            && client.list(ListRequest::default()).await.is_ok()
        {
            return (child, client);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sandbox_put(name: &str) -> PutRequest {
    let spec = serde_json::json!({"containers": [{"name": "app", "image": "busybox"}]});
    PutRequest {
        id: format!("sandbox/{name}"),
        spec_json: serde_json::to_vec(&spec).expect("json"),
        expected_revision: Some(0),
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = child.id().expect("child still running");
    let pid = i32::try_from(pid).expect("pid fits");
    kill(Pid::from_raw(pid), signal).expect("signal our own child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, client) = start(dir.path()).await;

    // Write continuously from another task; kill the server while writes are in flight.
    let (progress, mut acks) = tokio::sync::watch::channel(0usize);
    let writer = tokio::spawn(async move {
        let mut client = client;
        let mut acked = Vec::new();
        for n in 0.. {
            match client.put(sandbox_put(&format!("web-{n}"))).await {
                Ok(resp) => {
                    let entity = resp.into_inner().entity.expect("entity");
                    acked.push((entity.id, entity.revision));
                    progress.send_replace(acked.len());
                }
                Err(_) => break,
            }
        }
        acked
    });
    tokio::time::timeout(WAIT, acks.wait_for(|n| *n >= 20))
        .await
        .expect("writes")
        .expect("writer");
    signal(&child, Signal::SIGKILL);
    child.wait().await.expect("reap");
    let acked = tokio::time::timeout(WAIT, writer)
        .await
        .expect("writer ends")
        .expect("writer");
    assert!(
        acked.len() >= 20,
        "only {} writes before the kill",
        acked.len()
    );

    let (mut child, mut client) = start(dir.path()).await;
    for (id, revision) in &acked {
        let got = client
            .get(GetRequest { id: id.clone() })
            .await
            .expect("acknowledged write kept");
        assert_eq!(got.into_inner().entity.expect("entity").revision, *revision);
    }
    let last = acked.last().map_or(0, |(_, r)| *r);
    let listing = client
        .list(ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        listing.revision >= last,
        "revision went back to {}",
        listing.revision
    );
    let next = client
        .put(sandbox_put("after-restart"))
        .await
        .expect("put")
        .into_inner();
    assert!(next.entity.expect("entity").revision > listing.revision);
    let status = terminate_and_wait(&mut child, WAIT).await.expect("exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_watches_removes_the_socket_and_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, mut client) = start(dir.path()).await;
    let request = WatchRequest {
        from_revision: 0,
        ..Default::default()
    };
    let mut stream = client.watch(request).await.expect("watch").into_inner();
    client.put(sandbox_put("web")).await.expect("put");
    let event = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("event");
    assert_eq!(event.expect("ok").expect("open").r#type, Type::Put as i32);

    let status = terminate_and_wait(&mut child, WAIT).await.expect("exits");
    assert!(status.success(), "{status:?}");
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("stream ends");
    assert!(
        !matches!(end, Ok(Some(_))),
        "no events after shutdown: {end:?}"
    );
    assert!(
        !dir.path().join("entity.sock").exists(),
        "socket file removed"
    );
}
