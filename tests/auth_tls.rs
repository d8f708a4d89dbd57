//! TLS on the entity server's TCP listener, with a CA generated at test time: a client
//! trusting that CA round-trips over TLS (with the bearer token); plain-text clients and
//! clients trusting another CA are refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use converge::server::{Bound, ServerError, StoreUrl, listen, open_store, serve_bound_secure};
use converge::tls::ServerTls;
use converge_testkit::{TestPki, write_private_file};
use converge_watch::client::{BearerToken, ClientError, ClientOptions, ClientTls, EntityClient};
use converge_watch::{EntityId, ServerAddress};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "converge-tls-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// A fresh CA named after `name` and a loopback server certificate it signed.
fn test_pki(name: &str) -> TestPki {
    TestPki::ca_signed(&format!("converge test CA {name}")).expect("test pki")
}

struct TlsServer {
    address: ServerAddress,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TlsServer {
    async fn start(dir: &Path, pki: &TestPki) -> Self {
        let store = open_store(&StoreUrl::Redb(dir.join("entities.redb")), 1000)
            .await
            .expect("open store");
        let bound = listen::bind(&ServerAddress::Tcp("127.0.0.1:0".to_string()))
            .await
            .expect("bind");
        let Bound::Tcp(listener) = &bound else {
            panic!("a TCP address binds a TCP listener");
        };
        let address = ServerAddress::Tcp(listener.local_addr().expect("addr").to_string());
        let token = BearerToken::new(TOKEN).expect("valid token");
        let tls = ServerTls::from_pem(pki.cert_pem.clone(), pki.key_pem.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_bound_secure(
            store,
            bound,
            Some(token),
            Some(tls),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            address,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("shutdown in time")
            .expect("server task")
            .expect("clean shutdown");
    }
}

fn options(ca_pem: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: Some(BearerToken::new(TOKEN).expect("valid token")),
        tls: ca_pem.map(|pem| ClientTls {
            ca_pem: pem.as_bytes().to_vec(),
            domain: None,
        }),
    }
}

fn id() -> EntityId {
    "sandbox/web".parse().expect("id")
}

fn spec() -> serde_json::Value {
    json!({"containers": [{"name": "app", "image": "busybox"}]})
}

/// Connecting may succeed lazily or fail at once; either way no call may get through.
async fn assert_no_call_gets_through(address: &ServerAddress, options: &ClientOptions) {
    match EntityClient::connect_with(std::slice::from_ref(address), options).await {
        Err(ClientError::Unavailable { .. }) => {}
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(client) => {
            let result = tokio::time::timeout(WAIT, client.put(&id(), &spec(), None))
                .await
                .expect("answers in time");
            assert!(result.is_err(), "the call must fail: {result:?}");
        }
    }
}

#[tokio::test]
async fn a_client_trusting_the_ca_round_trips_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = test_pki("a");
    let server = TlsServer::start(dir.path(), &pki).await;
    let client = EntityClient::connect_with(
        std::slice::from_ref(&server.address),
        &options(Some(&pki.ca_pem)),
    )
    .await
    .expect("connect over TLS");
    let stored = client.put(&id(), &spec(), Some(0)).await.expect("put");
    let read = client.get(&id()).await.expect("get").expect("exists");
    assert_eq!(read.revision, stored.revision);
    server.stop().await;
}

#[tokio::test]
async fn plain_text_and_foreign_ca_clients_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = test_pki("b");
    let other = test_pki("other");
    let server = TlsServer::start(dir.path(), &pki).await;
    assert_no_call_gets_through(&server.address, &options(None)).await;
    assert_no_call_gets_through(&server.address, &options(Some(&other.ca_pem))).await;
    let trusted = EntityClient::connect_with(
        std::slice::from_ref(&server.address),
        &options(Some(&pki.ca_pem)),
    )
    .await
    .expect("connect over TLS");
    assert!(trusted.get(&id()).await.expect("get").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_tls_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = test_pki("cli");
    let server = TlsServer::start(dir.path(), &pki).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write ca");
    let token = dir.path().join("token");
    write_private_file(&token, TOKEN).expect("write token");
    let address = server.address.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(["--server", &address, "get", "-o", "json"])
            .arg("--token-file")
            .arg(&token)
            .arg("--tls-ca")
            .arg(&ca)
            .env_remove("CONVERGE_TOKEN_FILE")
            .env_remove("CONVERGE_TLS_CA")
            .stdin(Stdio::null())
            .output()
            .expect("run converge")
    })
    .await
    .expect("cli runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}
