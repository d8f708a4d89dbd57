//! The registry with a token and TLS: requests without the token (or with a wrong one) get
//! `401` with a `WWW-Authenticate` challenge and store nothing; the importer, the puller and
//! skopeo get through with it, over HTTPS verified with a CA made at test time.

mod cluster_support;
mod registry_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use converge::artifact::{ArtifactError, ImportRequest, PushError, push_image};
use converge::registry::auth::CHALLENGE;
use converge::registry::{
    ArtifactStore, RegistryAuth, RegistrySecurity, RegistryTls, serve_registry_secure,
};
use converge::tls::ServerTls;
use converge_reconcilers::artifacts::{ImagePuller, PullError};
use converge_reconcilers::containerd::ContainerdClient;
use converge_testkit::{
    PrivateContainerd, TestPki, busybox_image_layout, unique_name, write_private_file,
};
use converge_watch::ServerAddress;
use converge_watch::client::{BearerToken, ClientOptions, ClientTls};
use registry_support::skopeo;
use reqwest::StatusCode;
use tokio::sync::oneshot;

const TOKEN: &str = "converge-registry-test-token-0123456789";

/// A fresh CA and a loopback registry certificate it signed.
fn test_pki() -> TestPki {
    TestPki::ca_signed("converge registry test CA").expect("test pki")
}

/// One registry requiring [`TOKEN`], plain or HTTPS, over a store in a temp dir.
struct Registry {
    url: String,
    store: ArtifactStore,
    archive: PathBuf,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn start(tls: Option<&TestPki>) -> Registry {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(dir.path().join("artifacts"))
        .await
        .expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let security = RegistrySecurity {
        auth: RegistryAuth::require(&token()),
        tls: tls.map(|pki| {
            RegistryTls::new(&ServerTls::from_pem(
                pki.cert_pem.clone(),
                pki.key_pem.clone(),
            ))
            .expect("tls identity")
        }),
    };
    let url = format!("{}://{addr}", security.scheme());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_registry_secure(
        store.clone(),
        listener,
        security,
        async move {
            let _ = stopped.await;
        },
    ));
    let layout = busybox_image_layout(dir.path().join("layout")).expect("layout");
    let archive = dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("archive");
    Registry {
        url,
        store,
        archive,
        dir,
        _stop: stop,
    }
}

fn token() -> BearerToken {
    BearerToken::new(TOKEN).expect("token")
}

impl Registry {
    fn import(&self, token: Option<&str>, ca: Option<&TestPki>) -> ImportRequest {
        let options = ClientOptions {
            token: token.map(|t| BearerToken::new(t).expect("token")),
            tls: ca.map(|pki| ClientTls {
                ca_pem: pki.ca_pem.clone().into_bytes(),
                domain: None,
            }),
        };
        ImportRequest::new(self.archive.clone(), "demo/busybox:v1", None, &self.url)
            .expect("request")
            .with_access(&options)
    }

    async fn assert_empty(&self) {
        assert!(
            self.store
                .list_repositories()
                .await
                .expect("repos")
                .is_empty(),
            "a repository was created"
        );
        assert!(
            self.store.list_blobs().await.expect("blobs").is_empty(),
            "a blob was stored"
        );
        assert!(
            self.store.list_uploads().await.expect("uploads").is_empty(),
            "an upload was started"
        );
    }
}

fn refused_with_401(
    result: Result<(converge::registry::Digest, converge::artifact::PushSummary), ArtifactError>,
) {
    match result {
        // The importer's first request is a HEAD (is the blob there?): a 401 without a body.
        Err(ArtifactError::Push(PushError::Refused { status, .. })) => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        other => panic!("wanted a 401 refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_right_token_get_a_challenge_and_store_nothing() {
    let registry = start(None).await;
    let http = reqwest::Client::new();
    let upload = format!("{}/v2/demo/busybox/blobs/uploads/", registry.url);
    for auth in [
        None,
        Some("Bearer not-the-right-token-at-all"),
        Some("Basic Og=="),
    ] {
        for (method, url) in [
            (reqwest::Method::GET, format!("{}/v2/", registry.url)),
            (reqwest::Method::POST, upload.clone()),
            (
                reqwest::Method::GET,
                format!("{}/v2/demo/busybox/tags/list", registry.url),
            ),
        ] {
            let mut request = http.request(method.clone(), &url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            let response = request.send().await.expect("send");
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {url} {auth:?}"
            );
            assert_eq!(response.headers()["www-authenticate"], CHALLENGE);
            assert_eq!(
                response.headers()["docker-distribution-api-version"],
                "registry/2.0"
            );
            let body: serde_json::Value = response.json().await.expect("json body");
            assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{body}");
        }
    }
    refused_with_401(push_image(&registry.import(None, None)).await);
    refused_with_401(push_image(&registry.import(Some("a-wrong-token-0123456789"), None)).await);
    registry.assert_empty().await;

    let (manifest, summary) = push_image(&registry.import(Some(TOKEN), None))
        .await
        .expect("push with the token");
    assert!(summary.pushed > 0);
    let response = http
        .get(format!("{}/v2/demo/busybox/manifests/v1", registry.url))
        .bearer_auth(TOKEN)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get manifest");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["docker-content-digest"],
        manifest.to_string().as_str()
    );
    let basic = http
        .get(format!("{}/v2/", registry.url))
        .basic_auth("anyone", Some(TOKEN))
        .send()
        .await
        .expect("ping with basic");
    assert_eq!(
        basic.status(),
        StatusCode::OK,
        "Basic with the token as password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_clients_trusting_the_ca_and_holding_the_token_get_through() {
    let pki = test_pki();
    let registry = start(Some(&pki)).await;
    assert!(registry.url.starts_with("https://"), "{}", registry.url);

    // No CA: the certificate cannot be verified, nothing is sent.
    match push_image(&registry.import(Some(TOKEN), None)).await {
        Err(ArtifactError::Push(PushError::Unreachable { .. })) => {}
        other => panic!("wanted an unverifiable certificate, got {other:?}"),
    }
    // Plain HTTP against the TLS port gets no HTTP answer at all.
    let plain = registry.url.replacen("https://", "http://", 1);
    let answer = reqwest::Client::new()
        .get(format!("{plain}/v2/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(answer.is_err(), "plain HTTP got an answer: {answer:?}");
    refused_with_401(push_image(&registry.import(None, Some(&pki))).await);
    registry.assert_empty().await;

    push_image(&registry.import(Some(TOKEN), Some(&pki)))
        .await
        .expect("push over TLS with the token");
    let repos = registry.store.list_repositories().await.expect("repos");
    assert_eq!(repos.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_puller_fetches_over_tls_with_the_token_and_is_refused_without() {
    let pki = test_pki();
    let registry = start(Some(&pki)).await;
    push_image(&registry.import(Some(TOKEN), Some(&pki)))
        .await
        .expect("push");
    let ctrd = PrivateContainerd::start()
        .await
        .expect("private containerd");
    let containerd = ContainerdClient::new(ctrd.socket(), &unique_name("regauth")).expect("client");
    containerd
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("containerd ready");
    let reference = "cluster.local:5000/demo/busybox:v1";

    let anonymous = ImagePuller::new(&registry.url)
        .and_then(|p| p.with_access(None, Some(pki.ca_pem.as_bytes())))
        .expect("puller");
    match anonymous.pull(&containerd, reference).await {
        Err(PullError::Rejected { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("wanted a 401 rejection, got {other:?}"),
    }
    assert!(
        containerd
            .get_image(reference)
            .await
            .expect("get")
            .is_none(),
        "a refused pull records no image"
    );

    let puller = ImagePuller::new(&registry.url)
        .and_then(|p| p.with_access(Some(&token()), Some(pki.ca_pem.as_bytes())))
        .expect("puller");
    let outcome = puller.pull(&containerd, reference).await.expect("pull");
    assert!(outcome.fetched);
    drop(ctrd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_over_tls_with_the_token_as_password_and_is_refused_without() {
    let pki = test_pki();
    let registry = start(Some(&pki)).await;
    let tmp = registry.dir.path();
    let certs = tmp.join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    std::fs::write(certs.join("ca.crt"), &pki.ca_pem).expect("ca.crt");
    let certs = certs.display().to_string();
    let host = registry.url.trim_start_matches("https://");
    let dest = format!("docker://{host}/demo/skopeo:v1");
    let src = format!("oci-archive:{}", registry.archive.display());

    let (ok, _, err) = skopeo(&["copy", "--dest-cert-dir", &certs, &src, &dest], tmp).await;
    assert!(!ok, "a push without credentials went through");
    assert!(
        err.contains("401") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    let wrong = "converge:not-the-token-0123456789";
    let (ok, _, _) = skopeo(
        &[
            "copy",
            "--dest-cert-dir",
            &certs,
            "--dest-creds",
            wrong,
            &src,
            &dest,
        ],
        tmp,
    )
    .await;
    assert!(!ok, "a push with a wrong token went through");
    registry.assert_empty().await;

    let creds = format!("converge:{TOKEN}");
    let (ok, _, err) = skopeo(
        &[
            "copy",
            "--dest-cert-dir",
            &certs,
            "--dest-creds",
            &creds,
            &src,
            &dest,
        ],
        tmp,
    )
    .await;
    assert!(ok, "skopeo copy with the token failed: {err}");
    let (ok, _, err) = skopeo(
        &["inspect", "--cert-dir", &certs, "--creds", &creds, &dest],
        tmp,
    )
    .await;
    assert!(ok, "skopeo inspect with the token failed: {err}");
    let (ok, _, _) = skopeo(&["inspect", "--cert-dir", &certs, &dest], tmp).await;
    assert!(!ok, "a read without the token went through");
}

/// Writes the PKI to `dir` (key mode 0600) and returns (cert, key, ca) paths.
fn write_pki(dir: &Path, pki: &TestPki) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert, &pki.cert_pem).expect("cert");
    write_private_file(&key, &pki.key_pem).expect("key");
    std::fs::write(&ca, &pki.ca_pem).expect("ca");
    (cert, key, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converge_server_serves_the_registry_over_tls_with_the_token_and_import_uses_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = test_pki();
    let (cert, key, ca) = write_pki(dir.path(), &pki);
    let (token_path, token) = cluster_support::token_file(dir.path());
    let listen = ServerAddress::Tcp(cluster_support::free_addr());
    let registry_addr = cluster_support::free_addr();
    let path = |p: &Path| p.display().to_string();
    let args: Vec<String> = vec![
        "--token-file".into(),
        path(&token_path),
        "server".into(),
        "--store".into(),
        format!("redb:{}", path(&dir.path().join("entities.redb"))),
        "--listen".into(),
        listen.to_string(),
        "--tls-cert".into(),
        path(&cert),
        "--tls-key".into(),
        path(&key),
        "--registry".into(),
        registry_addr.clone(),
        "--registry-tls-cert".into(),
        path(&cert),
        "--registry-tls-key".into(),
        path(&key),
    ];
    let mut server = cluster_support::ConvergeProcess::spawn(dir.path(), "server", &args);
    let options = ClientOptions {
        token: Some(token.clone()),
        tls: Some(ClientTls::from_ca_file(&ca).expect("ca")),
    };
    cluster_support::wait_for_server(&mut server, &listen, &options).await;

    let layout = busybox_image_layout(dir.path().join("layout")).expect("layout");
    let archive = dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("archive");
    let registry_url = format!("https://{registry_addr}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["--server", &listen.to_string()])
        .args(["--token-file", &path(&token_path), "--tls-ca", &path(&ca)])
        .args([
            "artifact",
            "import",
            &path(&archive),
            "--name",
            "demo/busybox:v1",
        ])
        .args(["--registry-url", &registry_url])
        .env_remove("CONVERGE_SERVER")
        .output()
        .await
        .expect("run converge artifact import");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ca_cert = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca cert");
    let https = reqwest::Client::builder()
        .add_root_certificate(ca_cert)
        .build()
        .expect("https client");
    let tags = format!("{registry_url}/v2/demo/busybox/tags/list");
    let refused = https.get(&tags).send().await.expect("get without token");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["www-authenticate"], CHALLENGE);
    let listed: serde_json::Value = https
        .get(&tags)
        .bearer_auth(token.expose())
        .send()
        .await
        .expect("get with token")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["tags"], serde_json::json!(["v1"]), "{listed}");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converge_server_refuses_a_registry_tls_key_others_can_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, _) = write_pki(dir.path(), &test_pki());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let registry_addr = cluster_support::free_addr();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("server")
        .arg("--store")
        .arg(format!(
            "redb:{}",
            dir.path().join("entities.redb").display()
        ))
        .arg("--listen")
        .arg(format!("unix:{}", dir.path().join("entity.sock").display()))
        .args(["--registry", &registry_addr])
        .arg("--registry-tls-cert")
        .arg(&cert)
        .arg("--registry-tls-key")
        .arg(&key)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("the server gives up in time")
        .expect("run converge server");
    assert!(!out.status.success(), "started with an open key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(
        std::net::TcpStream::connect(registry_addr.as_str()).is_err(),
        "the registry listens anyway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converge_up_pulls_from_its_own_tls_registry_with_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = test_pki();
    let (cert, key, ca) = write_pki(dir.path(), &pki);
    let (token_path, token) = cluster_support::token_file(dir.path());
    let ctrd = PrivateContainerd::start()
        .await
        .expect("private containerd");
    let namespace = unique_name("upreg");
    let containerd = ContainerdClient::new(ctrd.socket(), &namespace)
        .expect("client")
        .with_runc_root(ctrd.runc_root());
    let registry_addr = cluster_support::free_addr();
    let data = dir.path().join("data");
    let path = |p: &Path| p.display().to_string();
    let args: Vec<String> = vec![
        "--token-file".into(),
        path(&token_path),
        "--tls-ca".into(),
        path(&ca),
        "up".into(),
        "--data-dir".into(),
        path(&data),
        "--containerd-socket".into(),
        path(&ctrd.socket()),
        "--containerd-root".into(),
        path(&ctrd.root()),
        "--runc-root".into(),
        path(&ctrd.runc_root()),
        "--namespace".into(),
        namespace.clone(),
        "--node-id".into(),
        "n1".into(),
        "--host-network".into(),
        "--registry".into(),
        registry_addr.clone(),
        "--registry-tls-cert".into(),
        path(&cert),
        "--registry-tls-key".into(),
        path(&key),
    ];
    let mut up = cluster_support::ConvergeProcess::spawn(dir.path(), "up", &args);
    let socket = ServerAddress::Unix(data.join("entity.sock"));
    // The unix socket needs no token and speaks no TLS.
    let client =
        cluster_support::wait_for_server(&mut up, &socket, &ClientOptions::default()).await;

    let layout = busybox_image_layout(dir.path().join("layout")).expect("layout");
    let archive = dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("archive");
    let registry_url = format!("https://{registry_addr}");
    let options = ClientOptions {
        token: Some(token.clone()),
        tls: Some(ClientTls::from_ca_file(&ca).expect("ca")),
    };
    let request = ImportRequest::new(archive, "demo/busybox:v1", None, &registry_url)
        .expect("request")
        .with_access(&options);
    push_image(&request)
        .await
        .expect("push over TLS with the token");

    let id: converge_watch::EntityId = format!("sandbox/{}", unique_name("tls-pull"))
        .parse()
        .expect("id");
    let spec = serde_json::json!({"containers": [{"name": "app",
        "image": "cluster.local:5000/demo/busybox:v1", "command": ["sleep", "1000"]}]});
    client.put(&id, &spec, None).await.expect("apply");
    let status = cluster_support::eventually("the sandbox running", || async {
        let status = client.get(&id).await.ok()??.status;
        (status["phase"] == "running").then_some(status)
    })
    .await;
    assert_eq!(status["containers"][0]["state"], "running", "{status}");
    assert!(
        containerd
            .get_image("cluster.local:5000/demo/busybox:v1")
            .await
            .expect("get image")
            .is_some(),
        "the image was pulled into containerd"
    );
    up.kill();
    ctrd.stop().await.expect("stop containerd");
}
