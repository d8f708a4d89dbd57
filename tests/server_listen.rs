//! The entity server's unix socket: private mode, a live socket is never taken over, a
//! stale one is replaced, and other files are left alone.

mod server_support;

use std::os::unix::fs::PermissionsExt;

use converge::server::listen;
use converge::server::store::DEFAULT_HISTORY_LIMIT;
use converge_watch::ServerAddress;
use server_support::TestServer;

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
