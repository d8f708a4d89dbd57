//! Bench: put-to-delivery latency of watches on a real in-process server (redb, unix
//! socket) at paced write rates, with one watcher and with 100 concurrent watchers.

mod bench_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench_support::server::BenchServer;
use bench_support::{BenchError, connect, report};
use converge_watch::{
    Entity, EntityClient, EntityId, ListFilter, ServerAddress, StreamConfig, StreamEvent,
    watch_stream,
};
use futures::StreamExt;
use serde_json::json;

/// How long a writer runs at most.
const WRITE_WINDOW: Duration = Duration::from_secs(5);
/// How long watchers may lag behind the last put before the run gives up on them.
const DRAIN: Duration = Duration::from_secs(15);
/// Writer tasks sharing the paced schedule (one put in flight each).
const WRITERS: usize = 32;
/// Distinct ids the writers cycle through.
const IDS: usize = 256;

fn main() -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), BenchError> {
    let served = BenchServer::start("converge-bench-watch-").await?;
    let address = served.address.clone();
    let client = served.client.clone();
    let base = Instant::now();
    println!(
        "watch_latency: redb store, unix socket, {WRITERS} paced writer tasks, {WRITE_WINDOW:?} per rate"
    );
    println!("latency = time from just before the put call to the watcher receiving the event");
    for (rate, watchers) in [(100u64, 1usize), (1_000, 1), (10_000, 1), (1_000, 100)] {
        let label = format!("{rate}/s, {watchers} watcher(s)");
        let (sent, achieved, mut samples, mut round_trips) =
            measure(&client, &address, base, rate, watchers).await?;
        println!(
            "{label}: {sent} puts, achieved {achieved:.0} puts/s, {} deliveries (expected {})",
            samples.len(),
            sent * watchers as u64
        );
        report(
            &format!("  put round trip (baseline) {label}"),
            &mut round_trips,
        );
        report(&format!("  put-to-delivery {label}"), &mut samples);
    }
    served.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// The send time (ns since `base`) a put carried in its spec.
fn sent_ns(entity: &Entity) -> Option<u64> {
    entity.spec["containers"][0]["env"]["SENT_NS"]
        .as_str()?
        .parse()
        .ok()
}

/// Runs `watchers` watchers and a writer paced at `rate` puts/s for [`WRITE_WINDOW`];
/// returns puts sent, the achieved rate, every delivery's latency and every put's round
/// trip (the store's commit path, the baseline the delivery latency is compared with).
async fn measure(
    client: &EntityClient,
    address: &ServerAddress,
    base: Instant,
    rate: u64,
    watchers: usize,
) -> Result<(u64, f64, Vec<Duration>, Vec<Duration>), BenchError> {
    let tag = format!("w{rate}x{watchers}-");
    // Watchers, each on its own connection, ready (first list seen) before writing starts.
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..watchers {
        let watcher_client = connect(address).await?;
        let expected = Arc::clone(&expected);
        let tag = tag.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        tasks.push(tokio::spawn(async move {
            let mut stream = Box::pin(watch_stream(
                watcher_client,
                ListFilter::default(),
                StreamConfig::default(),
            ));
            let mut ready_tx = Some(ready_tx);
            let mut samples = Vec::new();
            let mut give_up: Option<Instant> = None;
            loop {
                let done = expected.load(Ordering::Acquire);
                if samples.len() as u64 >= done {
                    break;
                }
                if done != u64::MAX && give_up.is_none() {
                    give_up = Some(Instant::now() + DRAIN);
                }
                let next = match give_up {
                    Some(at) => match tokio::time::timeout_at(at.into(), stream.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                    None => match tokio::time::timeout(Duration::from_millis(200), stream.next())
                        .await
                    {
                        Ok(next) => next,
                        Err(_) => continue,
                    },
                };
                match next {
                    Some(StreamEvent::Restarted { .. }) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Some(StreamEvent::Applied(entity)) if entity.id.name().starts_with(&tag) => {
                        if let Some(sent) = sent_ns(&entity) {
                            let now = base.elapsed().as_nanos() as u64;
                            samples.push(Duration::from_nanos(now.saturating_sub(sent)));
                        }
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            samples
        }));
    }
    for r in ready {
        r.await?;
    }
    // The writer: put i is due at start + i/rate; WRITERS tasks take turns, none ever
    // bursts ahead of schedule, and nothing is due after WRITE_WINDOW.
    let ids: Arc<Vec<EntityId>> = Arc::new(
        (0..IDS)
            .map(|i| format!("sandbox/{tag}{i}").parse())
            .collect::<Result<_, _>>()?,
    );
    let total = rate * WRITE_WINDOW.as_secs();
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS as u64 {
        let client = client.clone();
        let ids = Arc::clone(&ids);
        writers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut round_trips = Vec::new();
            let mut i = w;
            while i < total {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                if due > start + WRITE_WINDOW || Instant::now() > start + WRITE_WINDOW {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let now = base.elapsed().as_nanos() as u64;
                let spec = json!({"containers": [{"name": "app", "image": "test.local/busybox:latest",
                    "env": {"SENT_NS": now.to_string()}}]});
                let put_at = Instant::now();
                client.put(&ids[(i as usize) % ids.len()], &spec, None).await?;
                round_trips.push(put_at.elapsed());
                sent += 1;
                i += WRITERS as u64;
            }
            Ok::<(u64, Vec<Duration>), BenchError>((sent, round_trips))
        }));
    }
    let mut sent = 0;
    let mut round_trips = Vec::new();
    for writer in writers {
        let (n, trips) = writer.await??;
        sent += n;
        round_trips.extend(trips);
    }
    let achieved = sent as f64 / start.elapsed().as_secs_f64();
    expected.store(sent, Ordering::Release);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    Ok((sent, achieved, samples, round_trips))
}
