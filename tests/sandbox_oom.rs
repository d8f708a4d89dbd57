//! A container that outgrows its memory limit, driven straight through the reconciler with
//! a real containerd: the kernel OOM-kills it, the status says so (`reason: OOMKilled`,
//! exit code 137, a message naming the OOM kill), the restart backs off like any exit
//! (growing delays, no hot loop), and the lifecycle events record each kill once.

mod sandbox_support;

use std::sync::Arc;
use std::time::Duration;

use converge::daemon::controller::sandbox_config;
use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::containerd::container_id;
use converge_reconcilers::engine::{Action, Context, Executor, Reconciler, WriteTracker};
use converge_reconcilers::logs::LifecycleLog;
use converge_reconcilers::sandbox::SandboxReconciler;
use converge_testkit::unique_name;
use converge_watch::cache::Cache;
use converge_watch::{EntityClient, StreamEvent};
use sandbox_support::{Env, IMAGE, NO_REGISTRY, sandbox_id};
use serde_json::{Value, json};

/// `tail` of an endless file without newlines keeps all of it in memory: it grows until
/// the 8 MiB limit makes the kernel kill it (it is the init process, so the task exits
/// with 137).
fn hungry(restart: &str) -> Value {
    json!({"restart": restart, "containers": [{"name": "app", "image": IMAGE,
        "command": ["tail", "/dev/zero"], "resources": {"memory_mb": 8}}]})
}

struct Driver {
    reconciler: SandboxReconciler<EntityClient>,
    cache: Cache,
}

impl Driver {
    async fn new(env: &Env) -> Driver {
        let cache = Cache::new();
        let (entities, revision) = env.client.list(&Default::default()).await.expect("list");
        cache.apply(&StreamEvent::Restarted { entities, revision });
        let reconciler = SandboxReconciler::new(
            cache.clone(),
            env.containerd.clone(),
            Arc::new(ImagePuller::new(NO_REGISTRY).expect("puller")),
            Arc::new(env.client.clone()),
            Arc::new(WriteTracker::default()),
            sandbox_config(&env.config(false)),
        );
        Driver { reconciler, cache }
    }

    /// One reconcile of `name` with the cache as fresh as a watch would keep it.
    async fn reconcile(&self, env: &Env, name: &str) -> Action {
        let fresh = env
            .client
            .get(&sandbox_id(name))
            .await
            .expect("get")
            .expect("exists");
        self.cache.apply(&StreamEvent::Applied(fresh));
        let ctx = Context {
            executor: Executor::real(),
            cancel: Default::default(),
        };
        self.reconciler
            .reconcile(&sandbox_id(name), &ctx)
            .await
            .expect("an OOM kill is not an engine error")
    }
}

/// Waits for the task of `name`'s `app` to exit; returns its exit status.
async fn exit_of(env: &Env, name: &str) -> u32 {
    let cid = container_id(&sandbox_id(name), "app");
    tokio::time::timeout(Duration::from_secs(20), env.containerd.wait_task(&cid))
        .await
        .expect("the hungry container is killed within 20 s")
        .expect("wait")
}

fn events(env: &Env, name: &str) -> Vec<String> {
    LifecycleLog::recent_events(&env.data_dir.join("logs").join(name), 100)
        .expect("events")
        .into_iter()
        .map(|e| format!("{} {}", e.subject, e.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_container_shows_oom_in_status_and_restarts_with_growing_delays() {
    let env = Env::start().await;
    let name = unique_name("oom");
    env.apply(&name, hungry("always")).await;
    let driver = Driver::new(&env).await;

    let mut delays = Vec::new();
    for round in 1..=2u32 {
        let started = driver.reconcile(&env, &name).await;
        assert_eq!(started, Action::Done, "round {round}: started");
        assert_eq!(exit_of(&env, &name).await, 137, "killed by SIGKILL");
        let Action::RequeueAfter(delay) = driver.reconcile(&env, &name).await else {
            panic!("an exited container waits out a backoff before its restart");
        };
        delays.push(delay);
        let status = env.status(&name).await;
        let app = &status["containers"][0];
        assert_eq!(app["state"], "restarting", "{status}");
        assert_eq!(app["exit_code"], 137, "{status}");
        assert_eq!(app["reason"], "OOMKilled", "{status}");
        assert_eq!(app["restart_count"], round - 1, "{status}");
        let message = status["message"].as_str().unwrap_or("");
        assert!(message.contains("OOM kill"), "{message}");
        // Seen again before the delay is up: still waiting, nothing restarted.
        let again = driver.reconcile(&env, &name).await;
        assert!(matches!(again, Action::RequeueAfter(_)), "{again:?}");
        tokio::time::sleep(delay).await;
    }
    assert!(delays[0] < delays[1], "the backoff grows: {delays:?}");

    driver.reconcile(&env, &name).await;
    let status = env.status(&name).await;
    assert_eq!(status["containers"][0]["restart_count"], 2, "{status}");
    assert_eq!(
        status["containers"][0]["reason"], "OOMKilled",
        "the last exit's reason is kept while it runs again: {status}"
    );

    let log = events(&env, &name);
    let kills: Vec<&String> = log
        .iter()
        .filter(|e| e.starts_with("app OOM-killed (memory limit 8 MiB), exited with code 137"))
        .collect();
    assert_eq!(kills.len(), 2, "one event per kill: {log:#?}");
    assert!(
        kills[0].contains("restart policy always: restarting in"),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|e| e.starts_with("app restarted (restart 2)")),
        "{log:#?}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_under_restart_never_makes_the_sandbox_dead_and_is_recorded_once() {
    let env = Env::start().await;
    let name = unique_name("oomnever");
    env.apply(&name, hungry("never")).await;
    let driver = Driver::new(&env).await;
    driver.reconcile(&env, &name).await;
    assert_eq!(exit_of(&env, &name).await, 137);
    for _ in 0..3 {
        assert_eq!(driver.reconcile(&env, &name).await, Action::Done);
    }
    let status = env.status(&name).await;
    assert_eq!(status["phase"], "dead", "{status}");
    assert_eq!(status["containers"][0]["reason"], "OOMKilled", "{status}");
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.contains("app was OOM-killed") && message.contains("code 137"),
        "{message}"
    );
    let log = events(&env, &name);
    let finals: Vec<&String> = log
        .iter()
        .filter(|e| e.contains("restart policy never: not restarting"))
        .collect();
    assert_eq!(finals.len(), 1, "recorded once: {log:#?}");
    assert!(finals[0].contains("OOM-killed"), "{log:#?}");
    env.shutdown().await;
}
