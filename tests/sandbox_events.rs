//! Lifecycle events of real sandboxes, driven straight through the reconciler (with its own
//! bridge and subnet): created, started, running with its ports ready, stopped, started
//! again, exited with code N, failed because ...; each recorded once per occurrence, not
//! on every reconcile of an unchanged state; `converge describe` shows them.

mod sandbox_support;

use std::sync::Arc;
use std::time::Duration;

use converge::daemon::controller::sandbox_config;
use converge_reconcilers::artifacts::ImagePuller;
use converge_reconcilers::containerd::container_id;
use converge_reconcilers::engine::{Action, Context, Executor, Reconciler, WriteTracker};
use converge_reconcilers::logs::LifecycleLog;
use converge_reconcilers::network::NetworkConfig;
use converge_reconcilers::sandbox::{SandboxNetworking, SandboxReconciler};
use converge_testkit::unique_name;
use converge_watch::cache::Cache;
use converge_watch::{EntityClient, StreamEvent};
use sandbox_support::{Env, IMAGE, NO_REGISTRY, TestNetwork, sandbox_id};
use serde_json::{Value, json};

struct Driver {
    reconciler: SandboxReconciler<EntityClient>,
    cache: Cache,
}

impl Driver {
    /// A reconciler with networking on this test's own bridge and subnet.
    async fn new(env: &mut Env) -> Driver {
        let run_dir = env.ctrd.shared_dir().join("run");
        let net = env.net.get_or_insert_with(TestNetwork::fresh);
        let mut network = NetworkConfig::new(&run_dir);
        network.bridge = net.bridge.clone();
        network.subnet = net.subnet.parse().expect("test subnet");
        let cache = Cache::new();
        let reconciler = SandboxReconciler::new(
            cache.clone(),
            env.containerd.clone(),
            Arc::new(ImagePuller::new(NO_REGISTRY).expect("puller")),
            Arc::new(env.client.clone()),
            Arc::new(WriteTracker::default()),
            sandbox_config(&env.config(false)),
        )
        .with_network(SandboxNetworking::new(network, env.data_dir.clone()));
        Driver { reconciler, cache }
    }

    /// One reconcile of `name` with the cache as fresh as a watch would keep it (a
    /// deleted sandbox is dropped from it).
    async fn reconcile(&self, env: &Env, name: &str) -> Action {
        let id = sandbox_id(name);
        match env.client.get(&id).await.expect("get") {
            Some(fresh) => {
                self.cache.apply(&StreamEvent::Applied(fresh));
            }
            None => {
                if let Some(last) = self.cache.get(&id) {
                    self.cache.apply(&StreamEvent::Deleted {
                        entity: (*last).clone(),
                        revision: last.revision + 1,
                    });
                }
            }
        }
        let ctx = Context {
            executor: Executor::real(),
            cancel: Default::default(),
        };
        self.reconciler
            .reconcile(&id, &ctx)
            .await
            .expect("reconcile")
    }
}

fn events(env: &Env, name: &str) -> Vec<String> {
    LifecycleLog::recent_events(&env.data_dir.join("logs").join(name), 100)
        .expect("events")
        .into_iter()
        .map(|e| format!("{} {}", e.subject, e.message))
        .collect()
}

fn web(state: &str) -> Value {
    json!({"restart": "never", "state": state, "containers": [{"name": "app", "image": IMAGE,
        "command": ["httpd", "-f", "-p", "8080"], "ports": [{"port": 8080}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lifecycle_step_of_a_sandbox_is_recorded_once_and_describe_shows_them() {
    let mut env = Env::start().await;
    let driver = Driver::new(&mut env).await;
    let name = unique_name("ev");
    env.apply(&name, web("running")).await;
    assert_eq!(driver.reconcile(&env, &name).await, Action::Done);
    assert_eq!(env.status(&name).await["phase"], "running");
    let first = vec![
        "app created: image test.local/busybox:latest".to_string(),
        "app started".to_string(),
        format!("{name} running; ports ready: 8080"),
    ];
    assert_eq!(events(&env, &name), first);
    for _ in 0..2 {
        driver.reconcile(&env, &name).await;
    }
    assert_eq!(
        events(&env, &name),
        first,
        "an unchanged state records nothing"
    );

    env.apply(&name, web("stopped")).await;
    driver.reconcile(&env, &name).await;
    driver.reconcile(&env, &name).await;
    env.apply(&name, web("running")).await;
    driver.reconcile(&env, &name).await;
    let log = events(&env, &name);
    assert_eq!(
        log[first.len()..],
        [
            format!("{name} stopped as the spec asks"),
            "app started: the spec says running again".to_string(),
            format!("{name} running; ports ready: 8080"),
        ],
        "{log:#?}"
    );

    let out = env.describe(&name);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let section = text.split("Events:\n").nth(1).expect("events section");
    assert!(section.contains("app  created: image"), "{text}");
    assert!(section.contains("running; ports ready: 8080"), "{text}");

    env.client
        .delete(&sandbox_id(&name), None)
        .await
        .expect("delete");
    driver.reconcile(&env, &name).await;
    assert!(env.containers_of(&name).await.is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_and_failures_are_recorded_once_each() {
    let mut env = Env::start().await;
    let driver = Driver::new(&mut env).await;

    // A command that does not exist fails the sandbox on every retry: one event.
    let bad = unique_name("bad");
    env.apply(
        &bad,
        json!({"containers": [{"name": "app", "image": IMAGE, "command": ["/no/such/cmd"]}]}),
    )
    .await;
    for _ in 0..3 {
        let action = driver.reconcile(&env, &bad).await;
        assert!(matches!(action, Action::RequeueAfter(_)), "{action:?}");
    }
    let log = events(&env, &bad);
    let failures: Vec<&String> = log.iter().filter(|e| e.contains("failed:")).collect();
    assert_eq!(failures.len(), 1, "{log:#?}");
    assert!(failures[0].contains("/no/such/cmd"), "{log:#?}");

    // An exit the policy restarts: "exited with code 3 ... restarting in", then "restarted".
    let job = unique_name("job");
    env.apply(
        &job,
        json!({"restart": "on-failure", "containers": [{"name": "app", "image": IMAGE,
            "command": ["sh", "-c", "exit 3"]}]}),
    )
    .await;
    driver.reconcile(&env, &job).await;
    let cid = container_id(&sandbox_id(&job), "app");
    tokio::time::timeout(Duration::from_secs(20), env.containerd.wait_task(&cid))
        .await
        .expect("exits")
        .expect("wait");
    let Action::RequeueAfter(delay) = driver.reconcile(&env, &job).await else {
        panic!("an exit the policy restarts waits out its backoff");
    };
    driver.reconcile(&env, &job).await;
    tokio::time::sleep(delay).await;
    driver.reconcile(&env, &job).await;
    let log = events(&env, &job);
    let exits: Vec<&String> = log
        .iter()
        .filter(|e| e.starts_with("app exited with code 3"))
        .collect();
    assert_eq!(exits.len(), 1, "{log:#?}");
    assert!(
        exits[0].ends_with("restart policy on-failure: restarting in 300ms"),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|e| e == "app restarted (restart 1) after: exited with code 3"),
        "{log:#?}"
    );

    for name in [&bad, &job] {
        env.client
            .delete(&sandbox_id(name), None)
            .await
            .expect("delete");
        driver.reconcile(&env, name).await;
    }
    env.shutdown().await;
}
