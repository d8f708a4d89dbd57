//! Startup recovery: a `converge controller` process killed (SIGKILL, by pid) and started
//! again adopts the running sandbox — same task pids and start times, no restart, no new
//! start events, same address, the page still served — and keeps handing out other
//! addresses to new sandboxes. Own private containerd, bridge and subnet `10.199.156.0/24`.

mod crash_support;
mod sandbox_support;

use std::time::{Duration, Instant};

use converge_reconcilers::logs::LifecycleLog;
use converge_testkit::{free_loopback_port, metric_sum, unique_name};
use crash_support::{CrashEnv, PAGE, web_sandbox};
use sandbox_support::IMAGE;
use serde_json::{Value, json};

const CONTAINERS: [&str; 2] = ["web", "side"];

/// Sum of `controller_runtime_reconcile_total` samples of the sandbox controller.
fn sandbox_reconciles(metrics: &str) -> u64 {
    metric_sum(
        metrics,
        "controller_runtime_reconcile_total",
        &["controller=\"sandbox\""],
    )
}

/// Polls the controller's `/metrics` on `http` until it counts `n` sandbox reconciles.
async fn wait_reconciles(http: &str, n: u64) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while sandbox_reconciles(&last) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} reconciles:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(resp) = client.get(format!("http://{http}/metrics")).send().await {
            last = resp.text().await.unwrap_or_default();
        }
    }
}

/// Start time of process `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = stat.rsplit_once(')').expect("comm").1;
    after_comm
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .expect("starttime field")
}

/// Per container: (task pid, its start time).
async fn tasks_of(world: &CrashEnv, name: &str) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for c in CONTAINERS {
        let cid = format!("sandbox.{name}.{c}");
        let task = world
            .env
            .containerd
            .task_status(&cid)
            .await
            .expect("task status")
            .expect("a task");
        out.push((task.pid, start_ticks(task.pid)));
    }
    out
}

/// How many "started" lifecycle events the sandbox's containers have.
fn start_events(world: &CrashEnv, name: &str) -> usize {
    let dir = world.env.data_dir.join("logs").join(name);
    LifecycleLog::recent_events(&dir, 10_000)
        .expect("events")
        .iter()
        .filter(|e| CONTAINERS.contains(&e.subject.as_str()) && e.message.starts_with("started"))
        .count()
}

fn restart_counts(status: &Value) -> Vec<i64> {
    status["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["restart_count"].as_i64().unwrap_or(-1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_process_adopts_running_sandboxes_without_restarting_them() {
    let world = CrashEnv::start(156).await;
    let name = unique_name("adopt");
    let http = format!("127.0.0.1:{}", free_loopback_port().expect("free port"));
    let mut first = world.controller_with(None, &["--http", &http]);
    world.env.apply(&name, web_sandbox()).await;
    let ip = world.wait_running(&name).await;
    world.wait_page(&ip, PAGE).await;
    let tasks = tasks_of(&world, &name).await;
    let status = world.env.status(&name).await;
    let starts = start_events(&world, &name);
    assert_eq!(starts, CONTAINERS.len(), "one start event per container");

    first.kill().await;
    let http = format!("127.0.0.1:{}", free_loopback_port().expect("free port"));
    let mut second = world.controller_with(None, &["--http", &http]);
    // The initial sweep, the watch and at least one resync have each reconciled it.
    wait_reconciles(&http, 3).await;

    assert_eq!(
        tasks_of(&world, &name).await,
        tasks,
        "same task pids and start times: the containers were not restarted"
    );
    let after = world.env.status(&name).await;
    assert_eq!(after["phase"], "running", "{after}");
    assert_eq!(after["ip"], status["ip"], "the address is kept");
    assert_eq!(restart_counts(&after), vec![0, 0], "{after}");
    assert_eq!(start_events(&world, &name), starts, "no new start events");
    world.wait_page(&ip, PAGE).await;

    // The allocation was read back: a new sandbox gets another address.
    let other = unique_name("other");
    world
        .env
        .apply(
            &other,
            json!({"containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "100000"]}]}),
        )
        .await;
    let other_ip = world.wait_running(&other).await;
    assert_ne!(other_ip, ip, "another sandbox gets another address");

    for n in [&name, &other] {
        world.delete(n).await;
    }
    for n in [&name, &other] {
        world.wait_clean(n).await;
    }
    second.kill().await;
    world.env.shutdown().await;
}
