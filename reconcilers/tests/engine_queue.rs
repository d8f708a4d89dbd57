//! Invariants of the work queue, under paused tokio time.

use std::num::NonZeroU32;
use std::time::Duration;

use converge_reconcilers::engine::{
    BackoffConfig, BucketConfig, Lane, QueueConfig, QueueError, WorkQueue,
};
use futures::FutureExt;

fn config() -> QueueConfig {
    QueueConfig {
        aging: Duration::from_secs(1),
        backoff: BackoffConfig {
            base: Duration::from_millis(5),
            cap: Duration::from_secs(60),
            jitter: 0.0,
        },
        bucket: None,
    }
}

/// The key `get` hands out right now, without waiting.
fn ready(q: &WorkQueue<String>) -> Option<String> {
    q.get().now_or_never().flatten()
}

/// Every key ready now, each marked done straight away.
fn drain(q: &WorkQueue<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(k) = ready(q) {
        q.done(&k);
        out.push(k);
    }
    out
}

fn k(s: &str) -> String {
    s.to_string()
}

#[tokio::test(start_paused = true)]
async fn repeated_adds_of_a_waiting_key_collapse_into_one() {
    let q = WorkQueue::new(config());
    for _ in 0..5 {
        q.add(k("a")).expect("add");
        q.add_repair(k("a")).expect("add");
    }
    q.add(k("b")).expect("add");
    assert_eq!(q.len(), 2);
    assert_eq!(drain(&q), vec![k("a"), k("b")]);
}

#[tokio::test(start_paused = true)]
async fn queue_never_hands_out_one_key_twice_at_once() {
    let q = WorkQueue::new(config());
    q.add(k("a")).expect("add");
    let first = ready(&q).expect("a is ready");
    q.add(k("a")).expect("add during processing");
    q.add(k("a")).expect("again");
    assert_eq!(
        ready(&q),
        None,
        "a is processing; it must not be handed out again"
    );
    q.done(&first);
    assert_eq!(ready(&q), Some(k("a")), "re-queued once after done");
    q.done(&k("a"));
    assert_eq!(ready(&q), None, "and only once");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_worker_is_woken_when_a_key_arrives() {
    let q = std::sync::Arc::new(WorkQueue::new(config()));
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.get().await }
    });
    tokio::task::yield_now().await;
    q.add(k("x")).expect("add");
    assert_eq!(waiter.await.expect("join"), Some(k("x")));
}

#[tokio::test(start_paused = true)]
async fn keys_come_out_fifo_within_a_lane() {
    let q = WorkQueue::new(config());
    for name in ["c", "a", "b"] {
        q.add(k(name)).expect("add");
    }
    assert_eq!(drain(&q), vec![k("c"), k("a"), k("b")]);
}

#[tokio::test(start_paused = true)]
async fn urgent_keys_are_served_before_repair_keys() {
    let q = WorkQueue::new(config());
    q.add_repair(k("r1")).expect("add");
    q.add_repair(k("r2")).expect("add");
    q.add(k("u1")).expect("add");
    q.add(k("u2")).expect("add");
    assert_eq!(drain(&q), vec![k("u1"), k("u2"), k("r1"), k("r2")]);
}

#[tokio::test(start_paused = true)]
async fn a_repair_key_older_than_the_aging_bound_goes_before_urgent_keys() {
    let q = WorkQueue::new(config());
    q.add_repair(k("old")).expect("add");
    tokio::time::advance(Duration::from_millis(999)).await;
    q.add(k("u1")).expect("add");
    assert_eq!(
        ready(&q),
        Some(k("u1")),
        "within the bound urgent goes first"
    );
    q.done(&k("u1"));
    q.add(k("u2")).expect("add");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        ready(&q),
        Some(k("old")),
        "past the bound the repair key goes first"
    );
    q.done(&k("old"));
    assert_eq!(drain(&q), vec![k("u2")]);
}

#[tokio::test(start_paused = true)]
async fn an_urgent_add_promotes_a_key_waiting_on_repair() {
    let q = WorkQueue::new(config());
    q.add(k("u")).expect("add");
    q.add_repair(k("r")).expect("add");
    q.add_repair(k("p")).expect("add");
    q.add(k("p")).expect("promote");
    assert_eq!(q.len(), 3);
    assert_eq!(drain(&q), vec![k("u"), k("p"), k("r")]);
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_per_failure_is_capped_and_resets_on_forget() {
    let mut cfg = config();
    cfg.backoff.cap = Duration::from_millis(40);
    let q = WorkQueue::new(cfg);
    let delays: Vec<_> = (0..5)
        .map(|_| q.add_rate_limited(k("a")).expect("retry"))
        .collect();
    let ms = |n| Duration::from_millis(n);
    assert_eq!(delays, vec![ms(5), ms(10), ms(20), ms(40), ms(40)]);
    assert_eq!(q.failures(&k("a")), 5);
    assert_eq!(
        q.add_rate_limited(k("b")).expect("retry"),
        ms(5),
        "backoff is per key"
    );
    q.forget(&k("a"));
    assert_eq!(q.add_rate_limited(k("a")).expect("retry"), ms(5));
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_key_comes_back_only_after_its_backoff() {
    let q = WorkQueue::new(config());
    q.add_rate_limited(k("a")).expect("retry");
    q.add_rate_limited(k("a")).expect("retry"); // 10 ms, but the earlier 5 ms wins
    assert_eq!(ready(&q), None);
    tokio::time::advance(Duration::from_millis(4)).await;
    assert_eq!(ready(&q), None);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(ready(&q), Some(k("a")));
    q.done(&k("a"));
    tokio::time::advance(Duration::from_millis(20)).await;
    assert_eq!(
        ready(&q),
        None,
        "the superseded later timer does not fire again"
    );
}

#[tokio::test(start_paused = true)]
async fn requeue_after_keeps_the_earliest_due_time() {
    let q = WorkQueue::new(config());
    q.requeue_after(k("a"), Duration::from_secs(10))
        .expect("requeue");
    q.requeue_after(k("a"), Duration::from_secs(3))
        .expect("requeue");
    q.requeue_after(k("a"), Duration::from_secs(7))
        .expect("requeue");
    tokio::time::advance(Duration::from_millis(2999)).await;
    assert_eq!(ready(&q), None);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(drain(&q), vec![k("a")]);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        drain(&q),
        Vec::<String>::new(),
        "later requeues were superseded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_worker_wakes_when_a_delayed_key_falls_due() {
    let q = std::sync::Arc::new(WorkQueue::new(config()));
    q.requeue_after(k("later"), Duration::from_secs(2))
        .expect("requeue");
    let start = tokio::time::Instant::now();
    assert_eq!(q.get().await, Some(k("later")));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_token_bucket_bounds_retries_across_all_keys() {
    let mut cfg = config();
    cfg.backoff.base = Duration::from_millis(1);
    cfg.bucket = Some(BucketConfig {
        qps: NonZeroU32::new(10).expect("nonzero"),
        burst: NonZeroU32::new(5).expect("nonzero"),
    });
    let q = WorkQueue::new(cfg);
    for i in 0..50 {
        q.add_rate_limited(format!("k{i}")).expect("retry");
    }
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(drain(&q).len(), 5, "the burst passes at once");
    let mut per_step = Vec::new();
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(100)).await;
        per_step.push(drain(&q).len());
    }
    assert_eq!(per_step, vec![1; 10], "then one every 1/qps");
}

#[tokio::test(start_paused = true)]
async fn shutdown_refuses_adds_hands_out_what_waits_then_returns_none() {
    let q = WorkQueue::new(config());
    q.add(k("a")).expect("add");
    q.add(k("b")).expect("add");
    q.requeue_after(k("c"), Duration::from_secs(1))
        .expect("requeue");
    q.shutdown();
    assert_eq!(q.add(k("d")), Err(QueueError::ShuttingDown));
    assert_eq!(q.add_rate_limited(k("d")), Err(QueueError::ShuttingDown));
    assert_eq!(q.len(), 2, "a refused add changes nothing");
    assert_eq!(q.get().await, Some(k("a")));
    assert_eq!(q.get().await, Some(k("b")));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(q.get().await, None, "delayed adds are dropped on shutdown");
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_drain_waits_for_keys_in_processing() {
    let q = std::sync::Arc::new(WorkQueue::new(config()));
    q.add(k("a")).expect("add");
    let key = q.get().await.expect("a");
    let drained = tokio::spawn({
        let q = q.clone();
        async move { q.shutdown_with_drain().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!drained.is_finished(), "a is still processing");
    q.done(&key);
    drained.await.expect("join");
    assert_eq!(q.get().await, None);
}

#[tokio::test(start_paused = true)]
async fn done_of_a_key_not_processing_is_ignored() {
    let q = WorkQueue::new(config());
    q.done(&k("nobody"));
    q.add_to(k("a"), Lane::Repair).expect("add");
    q.done(&k("a"));
    assert_eq!(drain(&q), vec![k("a")]);
}

#[tokio::test(start_paused = true)]
async fn an_urgent_add_while_processing_brings_the_key_back_on_the_urgent_lane() {
    let q = WorkQueue::new(config());
    q.add_repair(k("r")).expect("add");
    let r = ready(&q).expect("r");
    q.add_repair(k("r")).expect("dirty on repair");
    q.add_repair(k("x")).expect("add");
    q.add(k("r")).expect("upgrade to urgent");
    q.done(&r);
    assert_eq!(drain(&q), vec![k("r"), k("x")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_key_is_lost_or_stranded_under_concurrent_producers_and_workers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let q = Arc::new(WorkQueue::<u64>::new(QueueConfig {
        bucket: None,
        ..config()
    }));
    let seen = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (q, seen) = (q.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            while let Some(key) = q.get().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                q.done(&key);
            }
        }));
    }
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let q = q.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..5_000u64 {
                q.add(p * 5_000 + i).expect("add");
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for p in producers {
        p.await.expect("producer");
    }
    // Every key is distinct, so each is processed exactly once; a stranded key would hang.
    tokio::time::timeout(Duration::from_secs(30), async {
        while seen.load(Ordering::SeqCst) < 20_000 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("all 20,000 keys processed");
    q.shutdown_with_drain().await;
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 20_000);
}
