//! The puller's typed errors that need no registry content: foreign registries, bad
//! references, an unreachable registry.

use converge_reconcilers::artifacts::{ImagePuller, PullError};
use converge_reconcilers::containerd::ContainerdClient;

fn offline_containerd(dir: &tempfile::TempDir) -> ContainerdClient {
    // Never dialled: every case fails before containerd is asked anything.
    ContainerdClient::new(dir.path().join("no-containerd.sock"), "converge-test").expect("client")
}

async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn references_outside_the_cluster_registry_are_unknown_registries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let puller = ImagePuller::new("http://127.0.0.1:1").expect("puller");
    let err = puller
        .pull(
            &offline_containerd(&dir),
            "docker.io/library/busybox:latest",
        )
        .await
        .expect_err("refused");
    assert!(matches!(err, PullError::UnknownRegistry(_)), "{err:?}");
}

#[tokio::test]
async fn malformed_references_are_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let puller = ImagePuller::new("http://127.0.0.1:1").expect("puller");
    for bad in [
        "busybox",
        "cluster.local:5000/../etc:v1",
        "cluster.local:5000/demo@sha256:1",
    ] {
        let err = puller
            .pull(&offline_containerd(&dir), bad)
            .await
            .expect_err("refused");
        assert!(matches!(err, PullError::Invalid(_)), "{bad}: {err:?}");
    }
    assert!(ImagePuller::new("ftp://127.0.0.1:1").is_err());
}

#[tokio::test]
async fn an_unreachable_registry_is_unavailable_and_retryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = closed_port().await;
    let puller = ImagePuller::new(&format!("http://127.0.0.1:{port}")).expect("puller");
    let err = puller
        .pull(&offline_containerd(&dir), "cluster.local:5000/demo:v1")
        .await
        .expect_err("refused");
    assert!(matches!(err, PullError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
}
