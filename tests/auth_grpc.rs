//! Bearer-token authentication of the entity server: required on TCP, not on unix sockets,
//! refused tokens change nothing, and the CLI sends the token from `--token-file`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use converge::server::{
    AuthError, Bound, ServerError, StoreUrl, listen, open_store, serve_bound_with_token,
};
use converge_watch::client::{BearerToken, ClientError, ClientOptions, EntityClient, ListFilter};
use converge_watch::{EntityId, ServerAddress};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "converge-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// One server with a redb store in `dir`, listening on `listen` and requiring `token`.
struct TestServer {
    address: ServerAddress,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    async fn start(dir: &Path, listen: ServerAddress, token: Option<BearerToken>) -> Self {
        let store = open_store(&StoreUrl::Redb(dir.join("entities.redb")), 1000)
            .await
            .expect("open store");
        let bound = listen::bind(&listen).await.expect("bind");
        let address = match &bound {
            Bound::Tcp(listener) => {
                ServerAddress::Tcp(listener.local_addr().expect("local addr").to_string())
            }
            Bound::Unix { path, .. } => ServerAddress::Unix(path.clone()),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_bound_with_token(store, bound, token, async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            stop: Some(stop),
            task,
        }
    }

    async fn tcp(dir: &Path) -> Self {
        let token = BearerToken::new(TOKEN).expect("valid token");
        Self::start(dir, loopback(), Some(token)).await
    }

    async fn client(&self, token: Option<&str>) -> EntityClient {
        let mut options = ClientOptions::default();
        if let Some(token) = token {
            options = options.with_token(BearerToken::new(token).expect("valid token"));
        }
        EntityClient::connect_with(std::slice::from_ref(&self.address), &options)
            .await
            .expect("connect")
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

fn loopback() -> ServerAddress {
    ServerAddress::Tcp("127.0.0.1:0".to_string())
}

fn id(name: &str) -> EntityId {
    format!("sandbox/{name}").parse().expect("id")
}

fn spec() -> serde_json::Value {
    json!({"containers": [{"name": "app", "image": "busybox"}]})
}

fn write_token_file(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join(format!("token-{mode:o}"));
    let mut file = std::fs::File::create(&path).expect("create token file");
    writeln!(file, "{TOKEN}").expect("write token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn assert_unauthenticated(result: Result<impl std::fmt::Debug, ClientError>) {
    match result {
        Err(ClientError::Unauthenticated(message)) => {
            assert!(!message.contains(TOKEN), "{message}");
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

#[tokio::test]
async fn a_tcp_server_refuses_calls_without_the_right_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::tcp(dir.path()).await;
    let anonymous = server.client(None).await;
    let impostor = server.client(Some("converge-wrong-token-0123456789")).await;
    assert_unauthenticated(anonymous.get(&id("web")).await);
    assert_unauthenticated(anonymous.list(&ListFilter::default()).await);
    assert_unauthenticated(impostor.get(&id("web")).await);
    assert_unauthenticated(impostor.put(&id("web"), &spec(), None).await);
    server.stop().await;
}

#[tokio::test]
async fn a_put_without_a_token_stores_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::tcp(dir.path()).await;
    let anonymous = server.client(None).await;
    assert_unauthenticated(anonymous.put(&id("sneaky"), &spec(), None).await);
    assert_unauthenticated(anonymous.delete(&id("sneaky"), None).await);
    let trusted = server.client(Some(TOKEN)).await;
    let (entities, revision) = trusted.list(&ListFilter::default()).await.expect("list");
    assert!(entities.is_empty(), "{entities:?}");
    assert_eq!(revision, 0, "no write may have happened");
    server.stop().await;
}

#[tokio::test]
async fn the_right_token_reads_and_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::tcp(dir.path()).await;
    let trusted = server.client(Some(TOKEN)).await;
    let stored = trusted
        .put(&id("web"), &spec(), Some(0))
        .await
        .expect("put");
    let read = trusted.get(&id("web")).await.expect("get").expect("exists");
    assert_eq!(read.revision, stored.revision);
    server.stop().await;
}

#[tokio::test]
async fn a_watch_without_a_token_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::tcp(dir.path()).await;
    let anonymous = server.client(None).await;
    assert_unauthenticated(
        anonymous
            .watch_raw(&ListFilter::default(), 1)
            .await
            .map(|_| ()),
    );
    let trusted = server.client(Some(TOKEN)).await;
    let _watch = trusted
        .watch_raw(&ListFilter::default(), 1)
        .await
        .expect("an authenticated watch starts");
    server.stop().await;
}

#[tokio::test]
async fn a_unix_socket_needs_no_token_but_accepts_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = ServerAddress::Unix(dir.path().join("run").join("entity.sock"));
    let token = BearerToken::new(TOKEN).expect("valid token");
    let server = TestServer::start(dir.path(), socket, Some(token)).await;
    let anonymous = server.client(None).await;
    anonymous
        .put(&id("web"), &spec(), Some(0))
        .await
        .expect("put over unix without a token");
    let trusted = server.client(Some(TOKEN)).await;
    assert!(trusted.get(&id("web")).await.expect("get").is_some());
    server.stop().await;
}

#[test]
fn a_token_file_readable_by_others_is_refused_before_listening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = write_token_file(dir.path(), 0o644);
    let err = converge::server::auth::listener_token(&loopback(), Some(&open), false)
        .expect_err("mode 0644 must be refused");
    assert!(matches!(err, AuthError::Token(_)), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    let private = write_token_file(dir.path(), 0o600);
    let token = converge::server::auth::listener_token(&loopback(), Some(&private), false)
        .expect("private file")
        .expect("a token");
    assert_eq!(token.expose(), TOKEN);
}

/// Runs the built `converge` binary with `args` against `server`; returns (success, stdout, stderr).
fn converge(
    server: &ServerAddress,
    token_file: Option<&Path>,
    args: &[&str],
) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_converge"));
    command
        .arg("--server")
        .arg(server.to_string())
        .args(args)
        .env_remove("CONVERGE_SERVER")
        .env_remove("CONVERGE_TOKEN_FILE")
        .stdin(Stdio::null());
    if let Some(path) = token_file {
        command.arg("--token-file").arg(path);
    }
    let output = command.output().expect("run converge");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_token_from_its_token_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::tcp(dir.path()).await;
    let address = server.address.clone();
    let token_file = write_token_file(dir.path(), 0o600);
    let open_file = write_token_file(dir.path(), 0o640);
    let manifest = dir.path().join("web.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&json!({"id": "sandbox/web", "kind": "sandbox", "spec": spec()}))
            .expect("json"),
    )
    .expect("write manifest");
    let manifest = manifest.to_string_lossy().into_owned();
    let (applied, without, with, bad_file) = tokio::task::spawn_blocking(move || {
        let without = converge(&address, None, &["get", "-o", "json"]);
        let applied = converge(&address, Some(&token_file), &["apply", "-f", &manifest]);
        let with = converge(
            &address,
            Some(&token_file),
            &["get", "sandbox/web", "-o", "json"],
        );
        let bad_file = converge(&address, Some(&open_file), &["get"]);
        (applied, without, with, bad_file)
    })
    .await
    .expect("cli runs");
    assert!(!without.0, "a call without a token must fail");
    assert!(
        without.2.starts_with("error: authentication failed: "),
        "{}",
        without.2
    );
    assert!(applied.0, "apply with the token: {}", applied.2);
    assert!(with.0, "get with the token: {}", with.2);
    assert!(with.1.contains("sandbox/web"), "{}", with.1);
    assert!(
        !bad_file.0,
        "a token file open to the group must be refused"
    );
    assert!(bad_file.2.contains("chmod 600"), "{}", bad_file.2);
    server.stop().await;
}

#[test]
fn the_server_binary_refuses_tcp_without_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("redb:{}", dir.path().join("entities.redb").display());
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(["server", "--store", &store, "--listen", "tcp:0.0.0.0:0"])
            .args(["--registry", "127.0.0.1:0"])
            .args(extra)
            .env_remove("CONVERGE_TOKEN_FILE")
            .stdin(Stdio::null())
            .output()
            .expect("run converge server")
    };
    let output = run(&[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without authentication"), "{stderr}");
    let output = run(&["--insecure-no-auth"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(
        !dir.path().join("entities.redb").exists(),
        "nothing may be created before the check"
    );
}

#[test]
fn converge_up_refuses_tcp_without_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "tcp:0.0.0.0:0", "--registry", "127.0.0.1:0"])
        .env_remove("CONVERGE_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run converge up");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without authentication"), "{stderr}");
    assert!(
        !dir.path().join("entities.redb").exists(),
        "the store must not be opened before the check"
    );
}
