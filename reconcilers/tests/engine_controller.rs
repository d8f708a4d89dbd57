//! Controller wiring (watch -> cache -> queue -> runner, resync, periodic, related watches,
//! write tracking) and the status writer's conflict handling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use converge_reconcilers::engine::{
    Action, Context, Controller, ControllerConfig, Executor, QueueKey, ReconcileError, Reconciler,
    Shutdown, StatusError, StatusStore, StatusStoreError, StatusWriter, Verb, WriteTracker,
};
use converge_watch::cache::Cache;
use converge_watch::{Entity, EntityId, StreamEvent};
use futures::channel::mpsc;
use serde_json::{Value, json};

/// Counts reconciles per key.
struct Counting<K> {
    calls: Arc<Mutex<HashMap<K, usize>>>,
}

#[async_trait]
impl<K: QueueKey> Reconciler for Counting<K> {
    type Key = K;
    async fn reconcile(&self, key: &K, _ctx: &Context) -> Result<Action, ReconcileError> {
        *self
            .calls
            .lock()
            .expect("lock")
            .entry(key.clone())
            .or_default() += 1;
        Ok(Action::Done)
    }
    fn name(&self) -> &str {
        "counting"
    }
}

type Calls<K> = Arc<Mutex<HashMap<K, usize>>>;

fn counting<K: QueueKey>() -> (Counting<K>, Calls<K>) {
    let calls: Calls<K> = Arc::default();
    (
        Counting {
            calls: calls.clone(),
        },
        calls,
    )
}

fn count<K: QueueKey>(calls: &Calls<K>, key: &K) -> usize {
    calls.lock().expect("lock").get(key).copied().unwrap_or(0)
}

fn id(s: &str) -> EntityId {
    s.parse().expect("id")
}

fn entity(name: &str, revision: i64) -> Entity {
    let mut e = Entity::new(id(&format!("sandbox/{name}")), json!({"containers": []}));
    e.revision = revision;
    e
}

fn no_resync() -> ControllerConfig {
    ControllerConfig {
        resync: None,
        ..ControllerConfig::default()
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_reconciled_before_the_cache_is_ready_then_watched_changes_are() {
    let (reconciler, calls) = counting::<EntityId>();
    let (tx, rx) = mpsc::unbounded();
    let cache = Cache::new();
    let controller = Controller::new(reconciler, no_resync()).watch(cache.clone(), rx);
    let trigger = controller.trigger();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(controller.run(shutdown.clone()));
    trigger.trigger(id("sandbox/early")).expect("trigger");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        count(&calls, &id("sandbox/early")),
        0,
        "the cache is not ready yet"
    );

    tx.unbounded_send(StreamEvent::Restarted {
        entities: vec![entity("a", 1), entity("b", 2)],
        revision: 2,
    })
    .expect("send");
    settle().await;
    assert_eq!(count(&calls, &id("sandbox/a")), 1);
    assert_eq!(count(&calls, &id("sandbox/b")), 1);
    assert_eq!(
        count(&calls, &id("sandbox/early")),
        1,
        "the early trigger ran once ready"
    );

    tx.unbounded_send(StreamEvent::Applied(entity("a", 3)))
        .expect("send");
    tx.unbounded_send(StreamEvent::Deleted {
        entity: entity("b", 2),
        revision: 4,
    })
    .expect("send");
    settle().await;
    assert_eq!(count(&calls, &id("sandbox/a")), 2);
    assert_eq!(
        count(&calls, &id("sandbox/b")),
        2,
        "a deletion is reconciled too"
    );
    shutdown.request();
    task.await.expect("controller");
}

#[tokio::test(start_paused = true)]
async fn events_of_the_controllers_own_writes_do_not_trigger_reconciles() {
    let (reconciler, calls) = counting::<EntityId>();
    let (tx, rx) = mpsc::unbounded();
    let cache = Cache::new();
    let controller = Controller::new(reconciler, no_resync()).watch(cache.clone(), rx);
    let tracker = controller.tracker();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(controller.run(shutdown.clone()));
    tx.unbounded_send(StreamEvent::Restarted {
        entities: vec![entity("a", 1)],
        revision: 1,
    })
    .expect("send");
    settle().await;
    assert_eq!(count(&calls, &id("sandbox/a")), 1);

    tracker.record(7);
    tx.unbounded_send(StreamEvent::Applied(entity("a", 7)))
        .expect("send");
    settle().await;
    assert_eq!(
        count(&calls, &id("sandbox/a")),
        1,
        "our own status write is not work"
    );
    assert_eq!(
        cache.get(&id("sandbox/a")).map(|e| e.revision),
        Some(7),
        "but the cache has it"
    );

    tx.unbounded_send(StreamEvent::Applied(entity("a", 8)))
        .expect("send");
    settle().await;
    assert_eq!(
        count(&calls, &id("sandbox/a")),
        2,
        "someone else's write is"
    );
    shutdown.request();
    task.await.expect("controller");
}

#[tokio::test(start_paused = true)]
async fn related_events_are_mapped_to_keys_of_this_controller() {
    let (reconciler, calls) = counting::<EntityId>();
    let (tx, rx) = mpsc::unbounded();
    let (related_tx, related_rx) = mpsc::unbounded();
    let cache = Cache::new();
    let controller = Controller::new(reconciler, no_resync())
        .watch(cache.clone(), rx)
        .watches(related_rx, |event: &StreamEvent| match event {
            StreamEvent::Applied(artifact) if artifact.id.name() == "demo" => {
                vec![id("sandbox/user")]
            }
            _ => Vec::new(),
        });
    let shutdown = Shutdown::new();
    let task = tokio::spawn(controller.run(shutdown.clone()));
    tx.unbounded_send(StreamEvent::Restarted {
        entities: vec![entity("user", 1)],
        revision: 1,
    })
    .expect("send");
    settle().await;
    let artifact = Entity::new(id("artifact/demo"), json!({}));
    related_tx
        .unbounded_send(StreamEvent::Applied(artifact))
        .expect("send");
    settle().await;
    assert_eq!(count(&calls, &id("sandbox/user")), 2);
    shutdown.request();
    task.await.expect("controller");
}

#[tokio::test(start_paused = true)]
async fn resync_requeues_every_cached_key_about_once_a_period() {
    let (reconciler, calls) = counting::<EntityId>();
    let (tx, rx) = mpsc::unbounded();
    let cache = Cache::new();
    let config = ControllerConfig {
        resync: Some(Duration::from_secs(60)),
        ..ControllerConfig::default()
    };
    let controller = Controller::new(reconciler, config).watch(cache.clone(), rx);
    let shutdown = Shutdown::new();
    let task = tokio::spawn(controller.run(shutdown.clone()));
    let entities: Vec<_> = (0..20).map(|i| entity(&format!("s{i}"), i + 1)).collect();
    tx.unbounded_send(StreamEvent::Restarted {
        entities,
        revision: 20,
    })
    .expect("send");
    tokio::time::sleep(Duration::from_secs(53)).await;
    assert_eq!(
        count(&calls, &id("sandbox/s0")),
        1,
        "no resync before 90% of the period"
    );
    tokio::time::sleep(Duration::from_secs(14)).await;
    for i in 0..20 {
        assert_eq!(
            count(&calls, &id(&format!("sandbox/s{i}"))),
            2,
            "s{i} resynced once by 110%"
        );
    }
    shutdown.request();
    task.await.expect("controller");
}

#[tokio::test(start_paused = true)]
async fn periodic_registrations_enqueue_their_key_every_interval() {
    let (reconciler, calls) = counting::<String>();
    let controller = Controller::new(reconciler, no_resync()).periodic(
        "image gc",
        Duration::from_secs(10),
        "images".to_string(),
    );
    let shutdown = Shutdown::new();
    let task = tokio::spawn(controller.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(count(&calls, &"images".to_string()), 3);
    shutdown.request();
    task.await.expect("controller");
}

/// A status store whose entity can be changed behind the writer's back.
struct FakeStore {
    current: Mutex<Entity>,
    /// Concurrent writes to inject before each of the next patches.
    interfere: AtomicUsize,
    patches: AtomicUsize,
}

impl FakeStore {
    fn new(e: Entity) -> Arc<Self> {
        Arc::new(Self {
            current: Mutex::new(e),
            interfere: AtomicUsize::new(0),
            patches: AtomicUsize::new(0),
        })
    }
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
        self.patches.fetch_add(1, Ordering::SeqCst);
        let mut cur = self.current.lock().expect("lock");
        if self.interfere.load(Ordering::SeqCst) > 0 {
            self.interfere.fetch_sub(1, Ordering::SeqCst);
            cur.revision += 1;
            cur.spec = json!({"generation": cur.revision});
        }
        if cur.revision != expected {
            return Err(StatusStoreError::Conflict { id: id.clone() });
        }
        cur.status = status.clone();
        cur.revision += 1;
        Ok(cur.clone())
    }
}

fn observed(e: &Entity) -> Option<Value> {
    Some(json!({"observed_revision": e.revision, "spec_seen": e.spec}))
}

#[tokio::test]
async fn a_stale_status_write_re_reads_and_recomputes_from_the_fresh_entity() {
    let start = entity("a", 10);
    let store = FakeStore::new(start.clone());
    store.interfere.store(2, Ordering::SeqCst);
    let tracker = Arc::new(WriteTracker::default());
    let writer = StatusWriter::new(store.clone(), tracker.clone(), Executor::real());
    let written = writer
        .write(&start, observed)
        .await
        .expect("write")
        .expect("written");
    assert_eq!(
        store.patches.load(Ordering::SeqCst),
        3,
        "two conflicts, then success"
    );
    assert_eq!(
        written.status["observed_revision"], 12,
        "computed from the fresh entity"
    );
    assert_eq!(written.status["spec_seen"], json!({"generation": 12}));
    assert_eq!(written.revision, 13);
    assert!(tracker.is_own(13), "the write is remembered");
    assert!(!tracker.is_own(12));
}

#[tokio::test]
async fn status_writes_give_up_after_the_attempt_bound() {
    let start = entity("a", 10);
    let store = FakeStore::new(start.clone());
    store.interfere.store(100, Ordering::SeqCst);
    let writer = StatusWriter::new(
        store.clone(),
        Arc::new(WriteTracker::default()),
        Executor::real(),
    )
    .with_max_attempts(3);
    let out = writer.write(&start, observed).await;
    assert!(
        matches!(out, Err(StatusError::Conflicts { attempts: 3, .. })),
        "{out:?}"
    );
    assert_eq!(store.patches.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn unchanged_statuses_and_dry_runs_write_nothing() {
    let mut start = entity("a", 10);
    start.status = observed(&start).expect("status");
    let store = FakeStore::new(start.clone());
    let writer = StatusWriter::new(
        store.clone(),
        Arc::new(WriteTracker::default()),
        Executor::real(),
    );
    assert!(
        writer
            .write(&start, observed)
            .await
            .expect("write")
            .is_none()
    );

    let dry = Executor::dry_run();
    let writer = StatusWriter::new(
        store.clone(),
        Arc::new(WriteTracker::default()),
        dry.clone(),
    );
    let fresh = entity("a", 10);
    assert!(
        writer
            .write(&fresh, observed)
            .await
            .expect("write")
            .is_none()
    );
    assert_eq!(store.patches.load(Ordering::SeqCst), 0);
    assert_eq!(dry.plan().actions()[0].verb, Verb::Update);
    assert_eq!(dry.plan().actions()[0].target, "sandbox/a/status");
}
