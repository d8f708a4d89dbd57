//! Tests of `ServiceReconciler` alone and inside an engine `Controller`, over a fake
//! status store.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use converge_watch::cache::Cache;
use converge_watch::{Entity, EntityId, StreamEvent};
use serde_json::Value;

use super::tests::{id, restarted, sandbox, service, web_spec};
use super::*;
use crate::engine::{
    Action, Context, Executor, Reconciler, StatusStore, StatusStoreError, StatusWriter,
    WriteTracker,
};

/// A status store over one entity, counting patches.
struct FakeStore {
    current: Mutex<Entity>,
    patches: Mutex<u32>,
}

#[async_trait]
impl StatusStore for FakeStore {
    async fn get(&self, _id: &EntityId) -> Result<Entity, StatusStoreError> {
        Ok(self.current.lock().expect("lock").clone())
    }
    async fn patch_status(
        &self,
        id: &EntityId,
        status: &Value,
        expected: i64,
    ) -> Result<Entity, StatusStoreError> {
        *self.patches.lock().expect("lock") += 1;
        let mut cur = self.current.lock().expect("lock");
        if cur.revision != expected {
            return Err(StatusStoreError::Conflict { id: id.clone() });
        }
        cur.status = status.clone();
        cur.revision += 1;
        Ok(cur.clone())
    }
}

fn reconciler_over(
    svc: &Entity,
    sandboxes: Vec<Entity>,
    executor: Executor,
) -> (ServiceReconciler<FakeStore>, Arc<FakeStore>, Cache) {
    let store = Arc::new(FakeStore {
        current: Mutex::new(svc.clone()),
        patches: Mutex::new(0),
    });
    let services = Cache::new();
    services.apply(&restarted(vec![svc.clone()], svc.revision));
    let sandbox_cache = Cache::new();
    sandbox_cache.apply(&restarted(sandboxes, svc.revision));
    let writer = StatusWriter::new(store.clone(), Arc::new(WriteTracker::default()), executor);
    let r = ServiceReconciler::new(services.clone(), sandbox_cache, writer, "node-a");
    (r, store, services)
}

fn ctx(executor: &Executor) -> Context {
    Context {
        executor: executor.clone(),
        cancel: Default::default(),
    }
}

#[tokio::test]
async fn the_reconciler_writes_endpoints_once_and_not_again_when_nothing_changed() {
    let svc = service("web", &web_spec(Some(8080)), 7);
    let sandboxes = vec![
        sandbox("b", "web", "", "running", Some("10.88.0.6")),
        sandbox("a", "web", "", "running", Some("10.88.0.5")),
    ];
    let exec = Executor::real();
    let (r, store, services) = reconciler_over(&svc, sandboxes, exec.clone());
    let action = r
        .reconcile(&id("service/web"), &ctx(&exec))
        .await
        .expect("reconcile");
    assert_eq!(action, Action::Done);
    let written = store.current.lock().expect("lock").clone();
    let addresses: Vec<&str> = written.status["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    assert_eq!(addresses, ["10.88.0.5:8080", "10.88.0.6:8080"]);
    assert_eq!(written.status["endpoints"][0]["node"], "node-a");
    assert_eq!(written.status["observed_revision"], 7);
    services.apply(&StreamEvent::Applied(written));
    r.reconcile(&id("service/web"), &ctx(&exec))
        .await
        .expect("reconcile again");
    assert_eq!(*store.patches.lock().expect("lock"), 1, "no second write");
}

#[tokio::test]
async fn in_dry_run_the_status_write_is_planned_not_done() {
    let svc = service("web", &web_spec(Some(8080)), 7);
    let sandboxes = vec![sandbox("a", "web", "", "running", Some("10.88.0.5"))];
    let exec = Executor::dry_run();
    let (r, store, _) = reconciler_over(&svc, sandboxes, exec.clone());
    r.reconcile(&id("service/web"), &ctx(&exec))
        .await
        .expect("reconcile");
    assert_eq!(*store.patches.lock().expect("lock"), 0);
    let plan = exec.plan();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan.actions()[0].target, "service/web/status");
}

#[tokio::test]
async fn a_missing_service_or_an_unloaded_sandbox_list_writes_nothing() {
    let svc = service("web", &web_spec(Some(8080)), 7);
    let exec = Executor::real();
    let (r, store, _) = reconciler_over(&svc, vec![], exec.clone());
    assert_eq!(
        r.reconcile(&id("service/gone"), &ctx(&exec))
            .await
            .expect("reconcile"),
        Action::Done
    );
    let not_ready = ServiceReconciler::new(
        Cache::new(),
        Cache::new(),
        StatusWriter::new(
            store.clone(),
            Arc::new(WriteTracker::default()),
            exec.clone(),
        ),
        "",
    );
    assert!(matches!(
        not_ready
            .reconcile(&id("service/web"), &ctx(&exec))
            .await
            .expect("reconcile"),
        Action::RequeueAfter(_)
    ));
    assert_eq!(*store.patches.lock().expect("lock"), 0);
}

/// Polls (in paused time) until the store's service status satisfies `pred`.
async fn wait_store(store: &FakeStore, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..10_000 {
        let status = store.current.lock().expect("lock").status.clone();
        if pred(&status) {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test(start_paused = true)]
async fn a_resync_recomputes_endpoints_that_no_event_announced() {
    use crate::engine::{Controller, ControllerConfig, Shutdown};
    use futures::channel::mpsc;

    let svc = service("web", &web_spec(Some(8080)), 7);
    let store = Arc::new(FakeStore {
        current: Mutex::new(svc.clone()),
        patches: Mutex::new(0),
    });
    let (services, sandboxes) = (Cache::new(), Cache::new());
    let tracker = Arc::new(WriteTracker::default());
    let writer = StatusWriter::new(store.clone(), tracker.clone(), Executor::real());
    let reconciler = ServiceReconciler::new(services.clone(), sandboxes.clone(), writer, "n");
    let (service_tx, service_rx) = mpsc::unbounded();
    let (sandbox_tx, sandbox_rx) = mpsc::unbounded();
    let mapper = SandboxEventMapper::new(sandboxes.clone(), services.clone());
    let config = ControllerConfig {
        resync: Some(std::time::Duration::from_secs(10)),
        tracker,
        ..ControllerConfig::default()
    };
    let controller = Controller::new(reconciler, config)
        .watch(services, service_rx)
        .watches(sandbox_rx, move |e| mapper.map(e));
    service_tx
        .unbounded_send(restarted(vec![svc], 7))
        .expect("send");
    sandbox_tx
        .unbounded_send(restarted(vec![], 7))
        .expect("send");
    let shutdown = Shutdown::new();
    let run = tokio::spawn(controller.run(shutdown.clone()));
    wait_store(&store, "the first status", |s| {
        s["message"] == "no sandbox matches app=web"
    })
    .await;

    // A sandbox the mapper never heard of (as if its event were lost).
    let mut missed = sandbox("web-1", "web", "", "running", Some("10.88.0.5"));
    missed.revision = 9;
    sandboxes.apply(&StreamEvent::Applied(missed));
    let status = wait_store(&store, "the resync's recomputation", |s| {
        s["endpoints"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    assert_eq!(status["endpoints"][0]["address"], "10.88.0.5:8080");
    assert_eq!(status["endpoints"][0]["node"], "n");
    shutdown.request();
    run.await.expect("controller stops");
}
