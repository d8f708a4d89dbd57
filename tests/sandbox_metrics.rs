//! Per-sandbox CPU and memory from cgroups, end to end: a controller with `--http` serves
//! `converge_sandbox_cpu_seconds_total` and `converge_sandbox_memory_bytes` labelled with
//! the sandbox and container while the container runs, and no series once the sandbox is
//! deleted; `converge describe` shows the same numbers read from the cgroup.

mod sandbox_support;

use converge_testkit::{free_loopback_addr, unique_name};
use sandbox_support::{Env, IMAGE, sandbox_id};
use serde_json::json;

async fn scrape(addr: std::net::SocketAddr) -> String {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    match client.get(format!("http://{addr}/metrics")).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the sample line starting with `series` (`name{labels}`) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_describe_show_each_running_containers_cpu_and_memory_until_deleted() {
    let mut env = Env::start().await;
    let addr = free_loopback_addr().expect("free address");
    let mut config = env.config(false);
    config.http = Some(addr);
    env.start_controller_with(config);
    let name = unique_name("metered");
    // Burn a little CPU first so the counter is visibly above zero, then idle.
    env.apply(
        &name,
        json!({"containers": [{"name": "app", "image": IMAGE,
            "command": ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000"],
            "resources": {"memory_mb": 32}}]}),
    )
    .await;
    env.wait_status(&name, "running", |s| s["phase"] == "running")
        .await;

    let labels = format!("{{sandbox=\"sandbox/{name}\",container=\"app\"}}");
    let cpu = format!("converge_sandbox_cpu_seconds_total{labels}");
    let memory = format!("converge_sandbox_memory_bytes{labels}");
    let mut text = String::new();
    for _ in 0..600 {
        text = scrape(addr).await;
        if sample(&text, &cpu).is_some_and(|v| v > 0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        sample(&text, &cpu).is_some_and(|v| v > 0.0),
        "no CPU time for {name}:\n{text}"
    );
    assert!(
        sample(&text, &memory).is_some_and(|v| v > 0.0),
        "no memory for {name}:\n{text}"
    );
    assert!(
        text.contains("# TYPE converge_sandbox_cpu_seconds counter"),
        "{text}"
    );

    let out = env.describe(&name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let described = String::from_utf8_lossy(&out.stdout);
    let usage = described
        .split("Usage:\n")
        .nth(1)
        .and_then(|s| s.split("Events:").next())
        .expect("usage section");
    assert!(usage.contains("CONTAINER"), "{described}");
    let row = usage
        .lines()
        .find(|l| l.trim_start().starts_with("app "))
        .expect("a row for app");
    assert!(row.contains("MiB") || row.contains("KiB"), "{row}");
    assert!(row.trim_end().ends_with("32.0 MiB"), "the limit: {row}");

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    env.eventually("the sandbox's containers are removed", || async {
        env.containers_of(&name).await.is_empty()
    })
    .await;
    let after = scrape(addr).await;
    assert!(
        !after.contains(&format!("sandbox=\"sandbox/{name}\"")),
        "no series of a deleted sandbox:\n{after}"
    );
    env.shutdown().await;
}
