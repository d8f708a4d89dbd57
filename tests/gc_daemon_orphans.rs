//! The daemon's GC wiring end to end: an in-process controller with a tiny orphan grace removes an orphan container, counts it in `/metrics` and records the pass for `converge describe node`.

mod reconcile_support;
mod sandbox_support;

use std::process::Command;
use std::time::Duration;

use converge::daemon::gc::{last_pass_path, read_last_passes};
use converge_reconcilers::gc_report::GcKind;
use converge_testkit::{free_loopback_port, metric_sum, unique_name};
use reconcile_support::create_orphan;
use sandbox_support::Env;

const BIN: &str = env!("CARGO_BIN_EXE_converge");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_removes_an_orphan_after_a_tiny_grace_and_counts_it() {
    let mut env = Env::start().await;
    let mut config = env.config(false);
    config.collectors.orphan_grace = Duration::from_secs(1);
    config.resync = Duration::from_secs(1);
    let http = format!("127.0.0.1:{}", free_loopback_port().expect("free port"));
    config.http = Some(http.parse().expect("addr"));
    let record = last_pass_path(&config.data_dir);
    env.start_controller_with(config);
    // Once the cache is ready the sandbox controller sweeps containerd once; an orphan pass
    // that started after readiness says that sweep is behind us and the GC controllers run.
    let ready = format!("http://{http}/readyz");
    env.eventually("the controller is ready", || {
        let ready = ready.clone();
        async move {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    let since = chrono::Utc::now();
    env.eventually("an orphan pass after readiness is recorded", || async {
        read_last_passes(&record).ok().flatten().is_some_and(|r| {
            r.passes
                .iter()
                .any(|p| p.kind == GcKind::Orphans && p.started > since)
        })
    })
    .await;

    let id = create_orphan(&env, &unique_name("ghost")).await;
    let containerd = env.containerd.clone();
    env.eventually("the orphan is removed", || {
        let containerd = containerd.clone();
        let id = id.clone();
        async move { containerd.get_container(&id).await.ok().flatten().is_none() }
    })
    .await;

    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metric_sum(&metrics, "converge_gc_deleted_total", &["kind=\"orphans\""]) >= 1,
        "{metrics}"
    );
    assert!(
        metrics.contains("converge_gc_last_run_timestamp_seconds{kind=\"orphans\"}"),
        "{metrics}"
    );

    let passes = read_last_passes(&record).expect("read").expect("record");
    assert!(
        passes.passes.iter().any(|p| p.kind == GcKind::Images),
        "{passes:?}"
    );
    let out = Command::new(BIN)
        .args(["describe", "node", "--data-dir"])
        .arg(&env.data_dir)
        .env_remove("CONVERGE_SERVER")
        .output()
        .expect("run converge describe node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Node:     test-node\n"), "{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("orphans")),
        "{text}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_node_without_a_record_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["describe", "node", "--data-dir"])
        .arg(dir.path())
        .env_remove("CONVERGE_SERVER")
        .output()
        .expect("run converge describe node");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gc-last-pass.json"), "{stderr}");
}
