//! Failing sandboxes driven straight through the reconciler: an unknown image or an
//! unreachable registry gives status `failed` with a message and retries with growing
//! delays; dry-run plans and changes nothing.

mod sandbox_support;

use std::sync::Arc;

use converge::daemon::controller::sandbox_config;
use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::engine::{Action, Context, Executor, Reconciler, Verb, WriteTracker};
use converge_reconcilers::sandbox::SandboxReconciler;
use converge_watch::cache::Cache;
use converge_watch::{EntityClient, StreamEvent};
use sandbox_support::{Env, IMAGE, NO_REGISTRY, sandbox_id};
use serde_json::json;

async fn reconciler(env: &Env) -> (SandboxReconciler<EntityClient>, Cache) {
    let (entities, revision) = env.client.list(&Default::default()).await.expect("list");
    let cache = Cache::new();
    cache.apply(&StreamEvent::Restarted { entities, revision });
    let r = SandboxReconciler::new(
        cache.clone(),
        env.containerd.clone(),
        Arc::new(ImagePuller::new(NO_REGISTRY).expect("puller")),
        Arc::new(env.client.clone()),
        Arc::new(WriteTracker::default()),
        sandbox_config(&env.config(false)),
    );
    (r, cache)
}

fn ctx(executor: Executor) -> Context {
    Context {
        executor,
        cancel: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_fail_the_sandbox_with_a_message_and_retry_later_each_time() {
    let env = Env::start().await;
    let cases = [
        (
            "elsewhere",
            "nowhere.example/missing:v1",
            "not in containerd",
        ),
        ("unpulled", "cluster.local:5000/missing:v1", "cannot pull"),
    ];
    for (name, image, _) in &cases {
        env.apply(
            name,
            json!({"containers": [{"name": "app", "image": image}]}),
        )
        .await;
    }
    for (name, _, expected) in &cases {
        let (r, cache) = reconciler(&env).await;
        let mut delays = Vec::new();
        for _ in 0..3 {
            let action = r
                .reconcile(&sandbox_id(name), &ctx(Executor::real()))
                .await
                .expect("a failed sandbox is not an engine error");
            let Action::RequeueAfter(d) = action else {
                panic!("a failed sandbox must be retried later, got {action:?}");
            };
            delays.push(d);
            // Keep the cache as fresh as a watch would.
            let fresh = env
                .client
                .get(&sandbox_id(name))
                .await
                .expect("get")
                .expect("exists");
            cache.apply(&StreamEvent::Applied(fresh));
        }
        assert!(delays[0] < delays[1] && delays[1] < delays[2], "{delays:?}");
        let status = env.status(name).await;
        assert_eq!(status["phase"], "failed", "{status}");
        let message = status["message"].as_str().unwrap_or("");
        assert!(message.contains(expected), "{message}");
        assert!(env.containers_of(name).await.is_empty());
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_plans_the_sandbox_and_changes_nothing() {
    let env = Env::start().await;
    let before = env
        .apply(
            "plan",
            json!({"containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "1000"]}]}),
        )
        .await;
    let (r, _cache) = reconciler(&env).await;
    let exec = Executor::dry_run();
    r.reconcile(&sandbox_id("plan"), &ctx(exec.clone()))
        .await
        .expect("reconcile");
    let plan = exec.plan();
    let verbs: Vec<(Verb, &str)> = plan
        .actions()
        .iter()
        .map(|a| (a.verb, a.target.as_str()))
        .collect();
    assert_eq!(
        verbs,
        vec![
            (Verb::Create, "container/sandbox.plan.app"),
            (Verb::Start, "task/sandbox.plan.app"),
            (Verb::Update, "sandbox/plan/status"),
        ]
    );
    assert!(env.containers_of("plan").await.is_empty());
    let after = env
        .client
        .get(&sandbox_id("plan"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(after.revision, before.revision, "no status was written");
    assert!(
        !env.data_dir.join("logs").exists(),
        "no log directory was made"
    );
    env.shutdown().await;
}
