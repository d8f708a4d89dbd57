//! `converge reconcile --kind sandbox` as a process: a dry-run pass prints the plan and
//! exits 2 when it has changes, changing nothing; without --dry-run it refuses.

mod reconcile_support;
mod sandbox_support;

use reconcile_support::reconcile;
use sandbox_support::{Env, IMAGE, NODE, sandbox_id};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_pass_prints_the_plan_exits_two_and_changes_nothing() {
    let env = Env::start().await;
    let before = env
        .apply(
            "planned",
            json!({"node": NODE, "containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "1000"]}]}),
        )
        .await;
    let out = reconcile(&env, &["--kind", "sandbox", "--dry-run", "-o", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    let targets: Vec<&str> = plan
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["target"].as_str())
        .collect();
    assert!(targets.contains(&"container/sandbox.planned.app"), "{plan}");
    assert!(targets.contains(&"task/sandbox.planned.app"), "{plan}");

    let table = reconcile(&env, &["--kind", "sandbox", "--dry-run"]);
    assert_eq!(table.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("VERB"));

    assert!(
        env.containers_of("planned").await.is_empty(),
        "nothing created"
    );
    let after = env
        .client
        .get(&sandbox_id("planned"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(after.revision, before.revision, "no status written");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_refuses_real_runs() {
    let env = Env::start().await;
    for kind in ["sandbox", "orphans", "images", "blobs"] {
        let real = reconcile(&env, &["--kind", kind]);
        assert_eq!(real.status.code(), Some(1), "{kind}");
        assert!(String::from_utf8_lossy(&real.stderr).contains("--dry-run"));
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_plan_exits_zero() {
    let env = Env::start().await;
    let out = reconcile(&env, &["--kind", "sandbox", "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no changes\n");
    env.shutdown().await;
}
