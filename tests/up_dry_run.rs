//! `converge up --dry-run` as a real process against a private containerd: with 100
//! sandboxes applied it reconciles every one, creates nothing, writes no status, serves
//! `/metrics`, and stops cleanly on SIGTERM.

mod sandbox_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge_reconcilers::containerd::{ContainerdClient, import_oci_layout};
use converge_testkit::{
    PrivateContainerd, busybox_image_layout, free_loopback_port, metric_sum, unique_name,
};
use converge_watch::PutSpec;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sandbox_support::{IMAGE, connect, sandbox_id};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_converge");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_in_dry_run_reconciles_a_hundred_sandboxes_and_changes_nothing() {
    let ctrd = PrivateContainerd::start().await.expect("containerd");
    let namespace = unique_name("up");
    let containerd = ContainerdClient::new(ctrd.socket(), &namespace).expect("client");
    let layout = busybox_image_layout(ctrd.dir().join("layout")).expect("busybox layout");
    import_oci_layout(&containerd, &layout.dir, IMAGE)
        .await
        .expect("import busybox");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let http = format!("127.0.0.1:{}", free_loopback_port().expect("free port"));
    let mut child = Command::new(BIN)
        .arg("up")
        .arg("--data-dir")
        .arg(&data)
        .arg("--containerd-socket")
        .arg(ctrd.socket())
        .args(["--namespace", &namespace, "--node-id", "n1", "--dry-run"])
        .args([
            "--registry",
            "127.0.0.1:0",
            "--http",
            &http,
            "--resync",
            "1h",
        ])
        .arg("--runc-root")
        .arg(ctrd.runc_root())
        .env_remove("CONVERGE_SERVER")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn converge up");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let server = format!("unix:{}", data.join("entity.sock").display())
        .parse()
        .expect("address");
    let client = connect(&server).await;
    let puts = (0..100)
        .map(|i| PutSpec {
            id: sandbox_id(&format!("dry-{i}")),
            spec: json!({"containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "1000"]}]}),
            expected_revision: None,
        })
        .collect();
    let written = client.put_batch(puts).await.expect("apply 100 sandboxes");

    let http_client = reqwest::Client::new();
    let url = |path: &str| format!("http://{http}{path}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while metric_sum(
        &last,
        "controller_runtime_reconcile_total",
        &["controller=\"sandbox\""],
    ) < 100
    {
        assert!(Instant::now() < deadline, "too few reconciles:\n{last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(resp) = http_client.get(url("/metrics")).send().await {
            last = resp.text().await.unwrap_or_default();
        }
    }
    let ready = http_client
        .get(url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);

    assert!(
        containerd
            .list_containers(&[])
            .await
            .expect("list")
            .is_empty(),
        "dry-run creates no container"
    );
    for e in &written {
        let now = client.get(&e.id).await.expect("get").expect("exists");
        assert_eq!(
            now.revision, e.revision,
            "dry-run writes no status to {}",
            e.id
        );
    }
    assert!(
        !data.join("logs").exists(),
        "dry-run makes no log directory"
    );

    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
            panic!("converge up did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit, got {status}");
    assert!(
        !data.join("entity.sock").exists(),
        "socket removed on shutdown"
    );
}
