//! The controller: wires watch streams, the cache, resync and periodic timers into the work
//! queue, and runs the reconciler over it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use converge_watch::cache::Cache;
use converge_watch::{EntityId, StreamEvent};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use rand::Rng;
use tokio::task::JoinSet;

use super::metrics::EngineMetrics;
use super::plan::Executor;
use super::queue::{Lane, QueueConfig, QueueError, WorkQueue};
use super::reconciler::Reconciler;
use super::runner::{Runner, RunnerConfig};
use super::shutdown::Shutdown;
use super::tracker::WriteTracker;

/// What the controller needs from a cache of watched objects.
#[async_trait]
pub trait KeyCache: Send + Sync + 'static {
    /// The key of one cached object.
    type Key;
    /// Applies one watch event; returns the keys whose state changed.
    fn apply(&self, event: &StreamEvent) -> Vec<Self::Key>;
    /// Every cached key.
    fn keys(&self) -> Vec<Self::Key>;
    /// True once a full list has been applied.
    fn is_ready(&self) -> bool;
    /// Resolves once a full list has been applied.
    async fn wait_ready(&self);
}

#[async_trait]
impl KeyCache for Cache {
    type Key = EntityId;
    fn apply(&self, event: &StreamEvent) -> Vec<EntityId> {
        Cache::apply(self, event)
    }
    fn keys(&self) -> Vec<EntityId> {
        self.ids()
    }
    fn is_ready(&self) -> bool {
        Cache::is_ready(self)
    }
    async fn wait_ready(&self) {
        Cache::wait_ready(self).await;
    }
}

/// Tuning of a [`Controller`].
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Queue tuning (aging bound, backoff, token bucket).
    pub queue: QueueConfig,
    /// Worker count and reconcile timeout.
    pub runner: RunnerConfig,
    /// Level-triggered resync period (default 1 min, jittered by ±10%); `None` disables it.
    pub resync: Option<Duration>,
    /// Real or dry-run.
    pub executor: Executor,
    /// Where to record metrics, if anywhere.
    pub metrics: Option<EngineMetrics>,
    /// Own writes to ignore; share one between the controller and its status writer.
    pub tracker: Arc<WriteTracker>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            queue: QueueConfig::default(),
            runner: RunnerConfig::default(),
            resync: Some(Duration::from_secs(60)),
            executor: Executor::real(),
            metrics: None,
            tracker: Arc::new(WriteTracker::default()),
        }
    }
}

/// Enqueues keys from outside the controller (containerd events, manual triggers).
/// Cloning is cheap.
#[derive(Debug)]
pub struct Trigger<K> {
    queue: Arc<WorkQueue<K>>,
}

impl<K> Clone for Trigger<K> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<K: super::reconciler::QueueKey> Trigger<K> {
    /// Enqueues `key` on the urgent lane; fails only once the controller is shutting down.
    pub fn trigger(&self, key: K) -> Result<(), QueueError> {
        self.queue.add(key)
    }

    /// Enqueues a batch on the urgent lane under one lock: duplicates in the batch collapse
    /// before any worker can take one. Fails only once the controller is shutting down.
    pub fn trigger_all(&self, keys: impl IntoIterator<Item = K>) -> Result<(), QueueError> {
        self.queue.add_all(keys, Lane::Urgent)
    }

    /// Enqueues `key` on the repair lane; fails only once the controller is shutting down.
    pub fn repair(&self, key: K) -> Result<(), QueueError> {
        self.queue.add_repair(key)
    }
}

type Mapper<K> = Arc<dyn Fn(&StreamEvent) -> Vec<K> + Send + Sync>;
type KeyFilter<K> = Arc<dyn Fn(&K) -> bool + Send + Sync>;
type SharedCache<K> = Arc<dyn KeyCache<Key = K>>;

/// A reconciler with its queue, its event sources and its runner.
pub struct Controller<R: Reconciler> {
    reconciler: Arc<R>,
    config: ControllerConfig,
    queue: Arc<WorkQueue<R::Key>>,
    primary: Option<(SharedCache<R::Key>, BoxStream<'static, StreamEvent>)>,
    related: Vec<(BoxStream<'static, StreamEvent>, Mapper<R::Key>)>,
    periodic: Vec<(String, Duration, R::Key)>,
    filter: Option<KeyFilter<R::Key>>,
}

impl<R: Reconciler> std::fmt::Debug for Controller<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.reconciler.name())
            .finish_non_exhaustive()
    }
}

impl<R: Reconciler> Controller<R> {
    /// A controller for `reconciler` with no event source yet.
    pub fn new(reconciler: R, config: ControllerConfig) -> Self {
        let metrics = config
            .metrics
            .as_ref()
            .map(|m| m.controller(reconciler.name()));
        let queue = Arc::new(WorkQueue::with_metrics(config.queue.clone(), metrics));
        Self {
            reconciler: Arc::new(reconciler),
            config,
            queue,
            primary: None,
            related: Vec::new(),
            periodic: Vec::new(),
            filter: None,
        }
    }

    /// The primary source: each event of `stream` is applied to `cache`, and the keys it
    /// changed go on the urgent lane, except events of revisions this controller wrote
    /// itself. Resync walks `cache`, and no reconcile starts before `cache` is ready.
    pub fn watch<C, S>(mut self, cache: C, stream: S) -> Self
    where
        C: KeyCache<Key = R::Key>,
        S: Stream<Item = StreamEvent> + Send + 'static,
    {
        self.primary = Some((Arc::new(cache), stream.boxed()));
        self
    }

    /// A related source: `mapper` turns each event into keys of this controller (e.g. an
    /// artifact change into the sandboxes using it), enqueued on the urgent lane.
    pub fn watches<S, M>(mut self, stream: S, mapper: M) -> Self
    where
        S: Stream<Item = StreamEvent> + Send + 'static,
        M: Fn(&StreamEvent) -> Vec<R::Key> + Send + Sync + 'static,
    {
        self.related.push((stream.boxed(), Arc::new(mapper)));
        self
    }

    /// Enqueues `key` on the repair lane every `interval` (first after one interval), for
    /// reconcilers of actual state. `name` shows in logs.
    pub fn periodic(mut self, name: impl Into<String>, interval: Duration, key: R::Key) -> Self {
        self.periodic.push((name.into(), interval, key));
        self
    }

    /// Only keys passing `filter` are enqueued from the watch and resync (e.g. one kind
    /// out of a shared cache).
    pub fn filter(mut self, filter: impl Fn(&R::Key) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// A handle to enqueue keys from outside.
    pub fn trigger(&self) -> Trigger<R::Key> {
        Trigger {
            queue: self.queue.clone(),
        }
    }

    /// The controller's queue (for inspection and tests).
    pub fn queue(&self) -> Arc<WorkQueue<R::Key>> {
        self.queue.clone()
    }

    /// The write tracker events are checked against.
    pub fn tracker(&self) -> Arc<WriteTracker> {
        self.config.tracker.clone()
    }

    /// Runs until `shutdown` is requested: feeds the queue from every source, waits for the
    /// cache to be ready, then runs the workers; returns once the runner has stopped (see
    /// [`Runner::run`] for graceful and forced shutdown).
    pub async fn run(self, shutdown: Shutdown) {
        let name = self.reconciler.name().to_string();
        let queue = self.queue.clone();
        let filter = self.filter.clone();
        let keep = move |k: &R::Key| filter.as_ref().is_none_or(|f| f(k));
        let mut feeders = JoinSet::new();
        let mut cache_ready: Option<SharedCache<R::Key>> = None;
        if let Some((cache, mut stream)) = self.primary {
            cache_ready = Some(cache.clone());
            let events_queue = queue.clone();
            let tracker = self.config.tracker.clone();
            let events_keep = keep.clone();
            let resync_cache = cache.clone();
            feeders.spawn(async move {
                while let Some(event) = stream.next().await {
                    let keys = cache.apply(&event);
                    if let StreamEvent::Applied(e) = &event
                        && tracker.is_own(e.revision)
                    {
                        tracing::trace!(id = %e.id, revision = e.revision, "own write; not reconciling");
                        continue;
                    }
                    let keys = keys.into_iter().filter(|k| events_keep(k));
                    if events_queue.add_all(keys, Lane::Urgent).is_err() {
                        break;
                    }
                }
            });
            if let Some(period) = self.config.resync {
                let queue = queue.clone();
                let keep = keep.clone();
                let name = name.clone();
                feeders.spawn(async move {
                    resync_cache.wait_ready().await;
                    loop {
                        tokio::time::sleep(jittered(period)).await;
                        let keys: Vec<_> = resync_cache
                            .keys()
                            .into_iter()
                            .filter(|k| keep(k))
                            .collect();
                        tracing::debug!(controller = %name, keys = keys.len(), "resync");
                        if queue.add_all(keys, Lane::Repair).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        for (mut stream, mapper) in self.related {
            let queue = queue.clone();
            feeders.spawn(async move {
                while let Some(event) = stream.next().await {
                    if queue.add_all(mapper(&event), Lane::Urgent).is_err() {
                        break;
                    }
                }
            });
        }
        for (what, interval, key) in self.periodic {
            let queue = queue.clone();
            let name = name.clone();
            feeders.spawn(async move {
                let start = tokio::time::Instant::now() + interval;
                let mut tick =
                    tokio::time::interval_at(start, interval.max(Duration::from_millis(1)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    tracing::debug!(controller = %name, periodic = %what, key = %key, "periodic");
                    if queue.add_repair(key.clone()).is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(cache) = cache_ready {
            tokio::select! {
                () = cache.wait_ready() => {}
                () = shutdown.requested() => {
                    queue.shutdown();
                    feeders.abort_all();
                    return;
                }
            }
        }
        let mut runner = Runner::new(
            self.reconciler,
            queue,
            self.config.runner,
            self.config.executor,
        );
        if let Some(m) = &self.config.metrics {
            runner = runner.with_metrics(m.controller(&name));
        }
        runner.run(shutdown).await;
        feeders.abort_all();
    }
}

/// `period` scaled by a random factor in [0.9, 1.1).
fn jittered(period: Duration) -> Duration {
    period.mul_f64(rand::rng().random_range(0.9..1.1))
}
