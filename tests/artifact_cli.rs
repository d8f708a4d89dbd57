//! `converge server` serves the registry beside the entity API, and `converge artifact import`
//! / `archive` work through the built binary against it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use converge_testkit::{KillOnDrop, busybox_image_layout, free_loopback_port};

const BIN: &str = env!("CARGO_BIN_EXE_converge");

/// A `converge server` with its registry on a free loopback port; killed by pid on drop.
struct Server {
    _child: KillOnDrop,
    socket: String,
    registry_url: String,
}

fn start_server(dir: &Path) -> Server {
    start_server_with(dir, &[])
}

fn start_server_with(dir: &Path, extra: &[&str]) -> Server {
    let port = free_loopback_port().expect("free port");
    let socket = format!("unix:{}", dir.join("entity.sock").display());
    let child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            &socket,
            "--registry",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--store")
        .arg(format!("redb:{}", dir.join("entities.redb").display()))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start converge server");
    let server = Server {
        _child: KillOnDrop::new(child),
        socket,
        registry_url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(dir.join("entity.sock").exists()
        && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    {
        assert!(Instant::now() < deadline, "server did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn converge(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--server", &server.socket])
        .args(args)
        .env_remove("CONVERGE_SERVER")
        .stdin(Stdio::null())
        .output()
        .expect("run converge")
}

#[test]
fn an_imported_archive_becomes_an_active_artifact_and_can_be_archived() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_server(dir.path());
    let layout = busybox_image_layout(dir.path().join("layout")).expect("image layout");
    let archive = dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("oci archive");
    let archive = archive.to_str().expect("utf-8 path");

    let out = converge(
        &server,
        &[
            "artifact",
            "import",
            archive,
            "--name",
            "cluster.local:5000/demo:v1",
            "--registry-url",
            &server.registry_url,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("artifact/demo-v1 imported"));

    let out = converge(&server, &["get", "artifact/demo-v1", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entity: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(entity["spec"]["state"], "active");
    assert_eq!(entity["spec"]["image"], "cluster.local:5000/demo:v1");
    assert!(
        entity["spec"]["manifest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );

    // The registry the server serves has the image under its tag.
    let tags = http_get(&format!("{}/v2/demo/tags/list", server.registry_url));
    assert!(tags.contains("v1"), "{tags}");

    let out = converge(&server, &["artifact", "archive", "artifact/demo-v1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = converge(&server, &["get", "artifact/demo-v1", "-o", "json"]);
    let entity: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(entity["spec"]["state"], "archived");
}

#[test]
fn the_server_collects_the_blobs_of_an_archived_artifact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_server_with(dir.path(), &["--gc-interval", "1s", "--blob-grace", "1s"]);
    let layout = busybox_image_layout(dir.path().join("layout")).expect("image layout");
    let archive = dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("oci archive");
    let out = converge(
        &server,
        &[
            "artifact",
            "import",
            archive.to_str().expect("utf-8 path"),
            "--name",
            "cluster.local:5000/gc:v1",
            "--registry-url",
            &server.registry_url,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blobs = dir.path().join("artifacts").join("blobs").join("sha256");
    let count = || std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert!(count() >= 3, "manifest, config and layer are stored");
    // Active: a few passes later everything is still there.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(count() >= 3, "an active artifact's blobs are kept");
    let out = converge(&server, &["artifact", "archive", "artifact/gc-v1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() > 0 {
        assert!(
            Instant::now() < deadline,
            "archived blobs were not collected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_corrupt_tar_is_refused_and_creates_no_artifact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_server(dir.path());
    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, b"this is not a tar file at all").expect("write");
    let out = converge(
        &server,
        &[
            "artifact",
            "import",
            bad.to_str().expect("utf-8"),
            "--name",
            "cluster.local:5000/bad:v1",
            "--registry-url",
            &server.registry_url,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    let out = converge(&server, &["get", "artifact", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

/// A plain HTTP/1.1 GET over loopback, so the test needs no HTTP client crate.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("read response");
    body
}
