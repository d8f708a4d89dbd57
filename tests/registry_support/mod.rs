//! Shared set-up of the registry tests: a plain-HTTP registry over a test's artifact store on a free loopback port (stopped when the test lets go of it), and skopeo as a real client.
#![allow(dead_code)]

use std::net::SocketAddr;

use converge::registry::{ArtifactStore, RegistryError, serve_registry_on};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A registry serving one store; dropping it (or [`RegistryServer::stop`]) shuts it down.
pub struct RegistryServer {
    /// The loopback address it listens on.
    pub addr: SocketAddr,
    /// `http://<addr>`.
    pub url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), RegistryError>>,
}

/// Binds a free loopback port and serves `store` on it in a spawned task; panics if no port
/// can be bound.
pub async fn serve_registry(store: ArtifactStore) -> RegistryServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_registry_on(store, listener, async move {
        let _ = stopped.await;
    }));
    RegistryServer {
        addr,
        url: format!("http://{addr}"),
        stop,
        task,
    }
}

impl RegistryServer {
    /// Asks the registry to stop and waits for it; returns how serving ended. Panics if the
    /// serving task panicked.
    pub async fn stop(self) -> Result<(), RegistryError> {
        let _ = self.stop.send(());
        self.task.await.expect("join")
    }
}

/// Runs `skopeo --insecure-policy <args>` with `tmp` as its temp dir and `tmp/auth.json` as its auth file;
/// returns (success, stdout, stderr). Panics if skopeo is not installed.
pub async fn skopeo(args: &[&str], tmp: &std::path::Path) -> (bool, String, String) {
    let out = tokio::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .env("TMPDIR", tmp)
        .env("REGISTRY_AUTH_FILE", tmp.join("auth.json"))
        .output()
        .await
        .expect("run skopeo (apt-get install skopeo)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
