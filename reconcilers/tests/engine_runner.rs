//! Invariants of the runner: one key at a time, retries, panics, timeouts, shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use converge_reconcilers::engine::{
    Action, BackoffConfig, Context, EngineMetrics, Executor, QueueConfig, ReconcileError,
    Reconciler, Runner, RunnerConfig, Shutdown, WorkQueue,
};
use tokio::time::Instant;

type Behaviour = dyn Fn(&str, usize) -> Step + Send + Sync;

/// What the fake reconciler does on its n-th call for a key.
#[derive(Clone, Copy)]
enum Step {
    Ok,
    Requeue(Duration),
    Fail,
    Terminal,
    Panic,
    Sleep(Duration),
}

/// A reconciler that records calls and checks that no key runs twice at once.
struct Fake {
    behaviour: Box<Behaviour>,
    calls: Mutex<HashMap<String, Vec<Instant>>>,
    running: Mutex<HashMap<String, usize>>,
    overlaps: AtomicUsize,
}

impl Fake {
    fn new(behaviour: impl Fn(&str, usize) -> Step + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            behaviour: Box::new(behaviour),
            calls: Mutex::default(),
            running: Mutex::default(),
            overlaps: AtomicUsize::new(0),
        })
    }

    fn calls(&self, key: &str) -> Vec<Instant> {
        self.calls
            .lock()
            .expect("lock")
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Reconciler for Fake {
    type Key = String;

    async fn reconcile(&self, key: &String, _ctx: &Context) -> Result<Action, ReconcileError> {
        let n = {
            let mut calls = self.calls.lock().expect("lock");
            let v = calls.entry(key.clone()).or_default();
            v.push(Instant::now());
            v.len()
        };
        {
            let mut running = self.running.lock().expect("lock");
            let r = running.entry(key.clone()).or_default();
            *r += 1;
            if *r > 1 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
        }
        let step = (self.behaviour)(key, n);
        if let Step::Sleep(d) = step {
            tokio::time::sleep(d).await;
        } else {
            tokio::task::yield_now().await;
        }
        *self
            .running
            .lock()
            .expect("lock")
            .entry(key.clone())
            .or_default() -= 1;
        match step {
            Step::Ok | Step::Sleep(_) => Ok(Action::Done),
            Step::Requeue(d) => Ok(Action::RequeueAfter(d)),
            Step::Fail => Err(ReconcileError::transient("boom")),
            Step::Terminal => Err(ReconcileError::terminal("spec can never work")),
            Step::Panic => panic!("reconciler bug"),
        }
    }

    fn name(&self) -> &str {
        "fake"
    }
}

fn queue() -> Arc<WorkQueue<String>> {
    Arc::new(WorkQueue::new(QueueConfig {
        backoff: BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        },
        bucket: None,
        ..QueueConfig::default()
    }))
}

/// Starts a runner with `workers` over `queue`; returns its shutdown signal and task.
fn start(
    fake: &Arc<Fake>,
    q: &Arc<WorkQueue<String>>,
    config: RunnerConfig,
) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let shutdown = Shutdown::new();
    let runner = Runner::new(fake.clone(), q.clone(), config, Executor::real());
    let task = tokio::spawn(runner.run(shutdown.clone()));
    (shutdown, task)
}

fn workers(n: usize) -> RunnerConfig {
    RunnerConfig {
        workers: n,
        timeout: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_is_never_reconciled_by_two_workers_at_once() {
    let fake = Fake::new(|_, _| Step::Sleep(Duration::from_millis(3)));
    let q = queue();
    let (shutdown, task) = start(&fake, &q, workers(8));
    for round in 0..50 {
        for key in ["a", "b", "c"] {
            q.add(key.to_string()).expect("add");
        }
        if round % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.overlaps.load(Ordering::SeqCst), 0);
    let a = fake.calls("a").len();
    assert!(
        (2..=50).contains(&a),
        "adds collapsed while a ran: {a} calls for 50 adds"
    );
    shutdown.request();
    task.await.expect("runner");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_reconciler_is_counted_and_retried_and_the_runner_survives() {
    let fake = Fake::new(|key, n| {
        if key == "bad" && n <= 2 {
            Step::Panic
        } else {
            Step::Ok
        }
    });
    let q = queue();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = EngineMetrics::register(&mut registry);
    let shutdown = Shutdown::new();
    let runner = Runner::new(fake.clone(), q.clone(), workers(1), Executor::real())
        .with_metrics(metrics.controller("fake"));
    let task = tokio::spawn(runner.run(shutdown.clone()));
    q.add("bad".to_string()).expect("add");
    tokio::time::sleep(Duration::from_secs(1)).await;
    q.add("good".to_string()).expect("add");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bad = fake.calls("bad");
    assert_eq!(bad.len(), 3, "two panics, then success");
    assert_eq!(
        bad[1] - bad[0],
        Duration::from_millis(5),
        "first retry after the base backoff"
    );
    assert_eq!(
        bad[2] - bad[1],
        Duration::from_millis(10),
        "second after twice that"
    );
    assert_eq!(fake.calls("good").len(), 1);
    assert_eq!(
        q.failures(&"bad".to_string()),
        0,
        "success forgets the failures"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("controller_runtime_reconcile_panics_total{controller=\"fake\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "controller_runtime_reconcile_total{controller=\"fake\",result=\"success\"} 2"
        ),
        "{text}"
    );
    shutdown.request();
    task.await.expect("runner");
}

#[tokio::test(start_paused = true)]
async fn a_permanently_failing_key_backs_off_and_is_retried_a_bounded_number_of_times_per_minute() {
    let fake = Fake::new(|_, _| Step::Fail);
    let q = queue();
    let (shutdown, task) = start(&fake, &q, workers(4));
    q.add("doomed".to_string()).expect("add");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = fake.calls("doomed");
    // 5 ms doubling: the 14th retry is due 5 ms * (2^14 - 1) ~ 82 s after the first call.
    assert!(calls.len() <= 15, "{} calls in a minute", calls.len());
    assert!(
        calls.len() >= 10,
        "{} calls in a minute: it is still retried",
        calls.len()
    );
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "delays grow: {gaps:?}"
    );
    shutdown.request();
    task.await.expect("runner");
}

#[tokio::test(start_paused = true)]
async fn a_terminal_error_is_not_retried() {
    let fake = Fake::new(|_, _| Step::Terminal);
    let q = queue();
    let (shutdown, task) = start(&fake, &q, workers(2));
    q.add("stuck".to_string()).expect("add");
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(fake.calls("stuck").len(), 1);
    assert_eq!(q.failures(&"stuck".to_string()), 0);
    shutdown.request();
    task.await.expect("runner");
}

#[tokio::test(start_paused = true)]
async fn requeue_after_brings_the_key_back_after_the_delay() {
    let fake = Fake::new(|_, n| {
        if n == 1 {
            Step::Requeue(Duration::from_secs(30))
        } else {
            Step::Ok
        }
    });
    let q = queue();
    let (shutdown, task) = start(&fake, &q, workers(2));
    q.add("later".to_string()).expect("add");
    tokio::time::sleep(Duration::from_secs(120)).await;
    let calls = fake.calls("later");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1] - calls[0], Duration::from_secs(30));
    shutdown.request();
    task.await.expect("runner");
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_over_the_timeout_is_abandoned_and_retried() {
    let fake = Fake::new(|_, n| {
        if n == 1 {
            Step::Sleep(Duration::from_secs(3600))
        } else {
            Step::Ok
        }
    });
    let q = queue();
    let (shutdown, task) = start(
        &fake,
        &q,
        RunnerConfig {
            workers: 1,
            timeout: Some(Duration::from_secs(10)),
        },
    );
    q.add("slow".to_string()).expect("add");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let calls = fake.calls("slow");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1] - calls[0],
        Duration::from_secs(10) + Duration::from_millis(5)
    );
    shutdown.request();
    task.await.expect("runner");
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_finishes_in_flight_work_and_takes_no_more() {
    let fake = Fake::new(|_, _| Step::Sleep(Duration::from_secs(5)));
    let q = queue();
    let (shutdown, task) = start(&fake, &q, workers(1));
    q.add("a".to_string()).expect("add");
    q.add("b".to_string()).expect("add");
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.request();
    let start = Instant::now();
    task.await.expect("runner");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(4),
        "a ran to completion"
    );
    assert_eq!(fake.calls("a").len(), 1);
    assert_eq!(fake.calls("b").len(), 0, "b was not started after shutdown");
    assert!(
        q.add("c".to_string()).is_err(),
        "the queue takes no more work"
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_shutdown_request_forces_in_flight_work_to_stop() {
    let fake = Fake::new(|_, _| Step::Sleep(Duration::from_secs(3600)));
    let q = queue();
    let (shutdown, task) = start(&fake, &q, workers(2));
    q.add("long".to_string()).expect("add");
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.request();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !task.is_finished(),
        "graceful shutdown waits for the reconcile"
    );
    shutdown.request();
    let start = Instant::now();
    task.await.expect("runner");
    assert!(start.elapsed() < Duration::from_secs(1));
}
