//! Named sandbox volumes against a private containerd: shared between containers, read-only
//! mounts honoured, removed with the sandbox; dry-run plans the volume and creates nothing.

mod sandbox_support;

use std::sync::Arc;

use converge::daemon::controller::sandbox_config;
use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::engine::{Context, Executor, Reconciler, Verb, WriteTracker};
use converge_reconcilers::sandbox::SandboxReconciler;
use converge_watch::StreamEvent;
use converge_watch::cache::Cache;
use sandbox_support::{Env, IMAGE, NO_REGISTRY, sandbox_id};
use serde_json::{Value, json};

fn spec() -> Value {
    json!({
        "volumes": [{"name": "data"}],
        "containers": [
            {"name": "writer", "image": IMAGE,
             "command": ["sh", "-c", "echo hello > /data/msg; sleep 1000"],
             "mounts": [{"volume": "data", "path": "/data"}]},
            {"name": "reader", "image": IMAGE,
             "command": ["sh", "-c", "sleep 1; cat /data/msg; touch /data/x || echo read-only; sleep 1000"],
             "mounts": [{"volume": "data", "path": "/data", "read_only": true}]}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_a_volume_read_only_where_asked_and_it_goes_with_the_sandbox() {
    let mut env = Env::start().await;
    env.start_controller(false);
    let name = converge_testkit::unique_name("vol");
    env.apply(&name, spec()).await;
    env.wait_status(&name, "phase running", |s| s["phase"] == "running")
        .await;

    let volume = env.data_dir.join("volumes").join(&name).join("data");
    let msg = volume.join("msg");
    let log = env.data_dir.join("logs").join(&name).join("reader.log");
    env.eventually("the reader saw the file and a read-only mount", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("hello") && text.contains("read-only")
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&msg).expect("the writer's file is on the host"),
        "hello\n"
    );
    assert!(
        !volume.join("x").exists(),
        "the read-only mount refused a write"
    );

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    let sandbox_volumes = env.data_dir.join("volumes").join(&name);
    env.eventually("containers and volumes are gone", || async {
        env.containers_of(&name).await.is_empty() && !sandbox_volumes.exists()
    })
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_plans_the_volume_and_creates_nothing() {
    let env = Env::start().await;
    let name = converge_testkit::unique_name("volplan");
    env.apply(&name, spec()).await;
    let (entities, revision) = env.client.list(&Default::default()).await.expect("list");
    let cache = Cache::new();
    cache.apply(&StreamEvent::Restarted { entities, revision });
    let r = SandboxReconciler::new(
        cache,
        env.containerd.clone(),
        Arc::new(ImagePuller::new(NO_REGISTRY).expect("puller")),
        Arc::new(env.client.clone()),
        Arc::new(WriteTracker::default()),
        sandbox_config(&env.config(false)),
    );
    let exec = Executor::dry_run();
    let ctx = Context {
        executor: exec.clone(),
        cancel: Default::default(),
    };
    r.reconcile(&sandbox_id(&name), &ctx)
        .await
        .expect("reconcile");
    let plan = exec.plan();
    let target = format!("volume/{name}/data");
    assert!(
        plan.actions()
            .iter()
            .any(|a| a.verb == Verb::Create && a.target == target),
        "no volume creation planned: {:?}",
        plan.actions()
    );
    assert!(
        !env.data_dir.join("volumes").exists(),
        "dry-run created a volume"
    );
    assert!(env.containers_of(&name).await.is_empty());
    env.shutdown().await;
}
