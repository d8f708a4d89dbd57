//! Engine benchmarks: the work queue beside a naive baseline, dispatch through queue and
//! runner, and a resync pass. Run: `cargo bench -p converge-reconcilers --bench engine`.

use std::collections::{HashSet, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use converge_reconcilers::engine::{
    Action, Context, Executor, Lane, QueueConfig, QueueKey, ReconcileError, Reconciler, Runner,
    RunnerConfig, Shutdown, WorkQueue,
};
use converge_watch::cache::Cache;
use converge_watch::{Entity, EntityId, StreamEvent};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// The naive, correct baseline: one mutex over a FIFO plus dirty and processing sets
/// (client-go's workqueue, without lanes or timers).
struct NaiveQueue {
    inner: Mutex<Naive>,
    ready: Notify,
}

#[derive(Default)]
struct Naive {
    queue: VecDeque<u64>,
    dirty: HashSet<u64>,
    processing: HashSet<u64>,
    shutting_down: bool,
}

impl NaiveQueue {
    fn new() -> Self {
        Self {
            inner: Mutex::default(),
            ready: Notify::new(),
        }
    }

    fn add(&self, key: u64) {
        let mut q = self.inner.lock().expect("lock");
        if q.shutting_down || !q.dirty.insert(key) {
            return;
        }
        if q.processing.contains(&key) {
            return;
        }
        q.queue.push_back(key);
        drop(q);
        self.ready.notify_one();
    }

    async fn get(&self) -> Option<u64> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.inner.lock().expect("lock");
                if let Some(key) = q.queue.pop_front() {
                    q.dirty.remove(&key);
                    q.processing.insert(key);
                    return Some(key);
                }
                if q.shutting_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn done(&self, key: u64) {
        let mut q = self.inner.lock().expect("lock");
        q.processing.remove(&key);
        if q.dirty.contains(&key) {
            q.queue.push_back(key);
            drop(q);
            self.ready.notify_one();
        }
    }

    fn shutdown(&self) {
        self.inner.lock().expect("lock").shutting_down = true;
        self.ready.notify_waiters();
    }
}

/// Which queue a run uses.
#[derive(Clone, Copy)]
enum Impl {
    Engine,
    Naive,
}

/// `adds` adds over `distinct` keys from one producer while `workers` get/done until the
/// queue is shut down and drained.
/// Keys handed out by each queue over all `dup90` runs, and the runs: a faster pick-up means
/// more keys are taken while their duplicates still arrive, so more work per run.
static ENGINE_GETS: AtomicUsize = AtomicUsize::new(0);
static NAIVE_GETS: AtomicUsize = AtomicUsize::new(0);
static ENGINE_RUNS: AtomicUsize = AtomicUsize::new(0);
static NAIVE_RUNS: AtomicUsize = AtomicUsize::new(0);

async fn queue_run(which: Impl, workers: usize, adds: u64, distinct: u64) {
    let repeat = adds / distinct;
    match which {
        Impl::Engine => ENGINE_RUNS.fetch_add(1, Ordering::Relaxed),
        Impl::Naive => NAIVE_RUNS.fetch_add(1, Ordering::Relaxed),
    };
    match which {
        Impl::Engine => {
            let q = Arc::new(WorkQueue::<u64>::new(QueueConfig {
                bucket: None,
                ..QueueConfig::default()
            }));
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let q = q.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(k) = q.get().await {
                        q.done(&k);
                        ENGINE_GETS.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for i in 0..adds {
                let _ = q.add(i / repeat);
            }
            q.shutdown();
            for t in tasks {
                let _ = t.await;
            }
        }
        Impl::Naive => {
            let q = Arc::new(NaiveQueue::new());
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let q = q.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(k) = q.get().await {
                        q.done(k);
                        NAIVE_GETS.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for i in 0..adds {
                q.add(i / repeat);
            }
            q.shutdown();
            for t in tasks {
                let _ = t.await;
            }
        }
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench_queue(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("queue");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let adds = 10_000u64;
    g.throughput(Throughput::Elements(adds));
    for (pattern, distinct) in [("distinct", 10_000u64), ("dup90", 1_000u64)] {
        for workers in [1usize, 4] {
            for (name, which) in [("engine", Impl::Engine), ("naive", Impl::Naive)] {
                let id = BenchmarkId::new(format!("{pattern}/{name}"), format!("{workers}w"));
                g.bench_function(id, |b| {
                    b.to_async(&rt)
                        .iter(|| queue_run(which, workers, adds, distinct))
                });
                let (gets, runs) = match which {
                    Impl::Engine => (&ENGINE_GETS, &ENGINE_RUNS),
                    Impl::Naive => (&NAIVE_GETS, &NAIVE_RUNS),
                };
                let per_run = gets.swap(0, Ordering::Relaxed) as f64
                    / runs.swap(0, Ordering::Relaxed).max(1) as f64;
                println!("queue/{pattern}/{name}/{workers}w: {per_run:.0} keys handed out per run");
            }
        }
    }
    // The data structures alone: one thread adds everything, then drains with get/done.
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (pattern, distinct) in [("distinct", 10_000u64), ("dup90", 1_000u64)] {
        for (name, which) in [("engine", Impl::Engine), ("naive", Impl::Naive)] {
            let id = BenchmarkId::new(format!("{pattern}/{name}"), "sequential");
            g.bench_function(id, |b| {
                b.to_async(&single)
                    .iter(|| queue_run(which, 1, adds, distinct))
            });
        }
    }
    g.finish();
}

/// A reconciler that does nothing but count, and signals when a target count is reached.
struct NoOp<K> {
    calls: AtomicUsize,
    target: AtomicUsize,
    reached: Notify,
    key: PhantomData<fn(K)>,
}

#[async_trait]
impl<K: QueueKey> Reconciler for NoOp<K> {
    type Key = K;
    async fn reconcile(&self, _key: &K, _ctx: &Context) -> Result<Action, ReconcileError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.target.load(Ordering::Relaxed) {
            self.reached.notify_one();
        }
        Ok(Action::Done)
    }
    fn name(&self) -> &str {
        "noop"
    }
}

struct Rig<K> {
    reconciler: Arc<NoOp<K>>,
    queue: Arc<WorkQueue<K>>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

fn rig<K: QueueKey>(workers: usize) -> Rig<K> {
    let reconciler = Arc::new(NoOp {
        calls: AtomicUsize::new(0),
        target: AtomicUsize::new(0),
        reached: Notify::new(),
        key: PhantomData,
    });
    let queue = Arc::new(WorkQueue::new(QueueConfig {
        bucket: None,
        ..QueueConfig::default()
    }));
    let shutdown = Shutdown::new();
    let runner = Runner::new(
        reconciler.clone(),
        queue.clone(),
        RunnerConfig {
            workers,
            timeout: None,
        },
        Executor::real(),
    );
    let task = tokio::spawn(runner.run(shutdown.clone()));
    Rig {
        reconciler,
        queue,
        shutdown,
        task,
    }
}

impl<K: QueueKey> Rig<K> {
    async fn stop(self) {
        self.shutdown.request();
        let _ = self.task.await;
    }

    async fn wait_idle(&self) {
        while !(self.queue.is_empty() && self.queue.processing() == 0) {
            tokio::task::yield_now().await;
        }
    }
}

/// Total reconciles seen by the trigger-burst benchmark, and bursts run (printed at the end).
static BURST_RECONCILES: AtomicUsize = AtomicUsize::new(0);
static BURSTS: AtomicUsize = AtomicUsize::new(0);
static BATCH_RECONCILES: AtomicUsize = AtomicUsize::new(0);
static BATCHES: AtomicUsize = AtomicUsize::new(0);

fn bench_dispatch(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("dispatch");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let keys = 100_000u64;
    g.throughput(Throughput::Elements(keys));
    g.bench_function("distinct_100k_4w", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let r = rig::<u64>(4);
                r.reconciler.target.store(keys as usize, Ordering::Relaxed);
                let reached = r.reconciler.reached.notified();
                let start = Instant::now();
                let _ = r.queue.add_all(0..keys, Lane::Urgent);
                reached.await;
                total += start.elapsed();
                r.stop().await;
            }
            total
        })
    });
    let triggers = 100_000u64;
    let distinct = 10_000u64;
    g.throughput(Throughput::Elements(triggers));
    g.bench_function("triggers_100k_over_10k_keys_4w", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let r = rig::<u64>(4);
                let start = Instant::now();
                for i in 0..triggers {
                    let _ = r.queue.add(i / (triggers / distinct));
                }
                r.wait_idle().await;
                total += start.elapsed();
                BURST_RECONCILES.fetch_add(
                    r.reconciler.calls.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                BURSTS.fetch_add(1, Ordering::Relaxed);
                r.stop().await;
            }
            total
        })
    });
    g.bench_function("triggers_100k_over_10k_keys_batched_4w", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let r = rig::<u64>(4);
                let start = Instant::now();
                let _ = r.queue.add_all(
                    (0..triggers).map(|i| i / (triggers / distinct)),
                    Lane::Urgent,
                );
                r.wait_idle().await;
                total += start.elapsed();
                BATCH_RECONCILES.fetch_add(
                    r.reconciler.calls.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                BATCHES.fetch_add(1, Ordering::Relaxed);
                r.stop().await;
            }
            total
        })
    });
    g.finish();
    let batches = BATCHES.load(Ordering::Relaxed).max(1);
    let bursts = BURSTS.load(Ordering::Relaxed).max(1);
    if BATCHES.load(Ordering::Relaxed) == 0 || BURSTS.load(Ordering::Relaxed) == 0 {
        return;
    }
    println!(
        "batched triggers: {:.1} reconciles per batch of {triggers} triggers over {distinct} keys",
        BATCH_RECONCILES.load(Ordering::Relaxed) as f64 / batches as f64
    );
    println!(
        "triggers burst: {:.1} reconciles per burst of {triggers} triggers over {distinct} keys",
        BURST_RECONCILES.load(Ordering::Relaxed) as f64 / bursts as f64
    );
}

fn bench_resync(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("resync");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let n = 10_000u64;
    let entities: Vec<Entity> = (0..n)
        .map(|i| {
            let id = format!("sandbox/s{i}").parse().expect("id");
            let mut e = Entity::new(id, serde_json::json!({"containers": []}));
            e.revision = i64::try_from(i).unwrap_or(i64::MAX) + 1;
            e
        })
        .collect();
    let cache = Cache::new();
    cache.apply(&StreamEvent::Restarted {
        entities,
        revision: 10_000,
    });
    g.throughput(Throughput::Elements(n));
    g.bench_function("enqueue_10k_cached_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let q = WorkQueue::new(QueueConfig::default());
                let start = Instant::now();
                let _ = q.add_all(cache.ids(), Lane::Repair);
                total += start.elapsed();
            }
            total
        })
    });
    g.bench_function("pass_10k_cached_keys_noop_4w", |b| {
        let cache = cache.clone();
        b.to_async(&rt).iter_custom(|iters| {
            let cache = cache.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let r = rig::<EntityId>(4);
                    r.reconciler.target.store(n as usize, Ordering::Relaxed);
                    let reached = r.reconciler.reached.notified();
                    let start = Instant::now();
                    let _ = r.queue.add_all(cache.ids(), Lane::Repair);
                    reached.await;
                    total += start.elapsed();
                    r.stop().await;
                }
                total
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_queue, bench_dispatch, bench_resync);
criterion_main!(benches);
