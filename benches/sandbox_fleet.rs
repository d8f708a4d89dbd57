//! Bench: 50 one-container networked sandboxes applied in one PutBatch until all run, and their deletion until all is gone, with the controller's CPU time and peak RSS, beside the raw containerd sequence for the same 50 containers in the same run.

mod bench_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bench_support::controller::ControllerProcess;
use bench_support::net::BenchNetwork;
use bench_support::resources::{Usage, mib, usage};
use bench_support::server::BenchServer;
use bench_support::{BenchError, ms, remove_container};
use converge_reconcilers::containerd::{
    ContainerRequest, ContainerdClient, LABEL_ENTITY_ID, RuntimeSpecInput, TaskIo, TaskState,
    build_runtime_spec, container_id, container_labels, import_oci_layout,
};
use converge_testkit::{PrivateContainerd, busybox_image_layout, unique_name};
use converge_watch::client::PutSpec;
use converge_watch::spec::ContainerSpec;
use converge_watch::{
    EntityClient, EntityId, Kind, ListFilter, StreamConfig, StreamEvent, watch_stream,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::sync::mpsc;

/// Name busybox is imported under.
const IMAGE: &str = "bench.local/busybox:latest";
/// Sandboxes per batch.
const FLEET: usize = 50;
/// Rounds of (raw sequential, raw concurrent, converge); `BENCH_ROUNDS` overrides it.
const ROUNDS: usize = 3;
/// The controller's workers, and the raw concurrent baseline's concurrency.
const WORKERS: usize = 4;
/// Longest a whole batch start or teardown may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM-to-SIGKILL grace on both sides (busybox `sleep` as pid 1 ignores SIGTERM).
const STOP_GRACE: Duration = Duration::from_millis(100);
/// Subnet of the bench's bridge (no test uses 10.199.241.0/24).
const NET_SUBNET: &str = "10.199.241.0/24";

fn main() -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

/// One measured batch: how long it took and what the controller used meanwhile.
struct Batch {
    took: Duration,
    cpu: Option<Duration>,
}

/// Start-all, then delete-all.
type UpDown = (Batch, Batch);

/// One round: raw sequential, raw concurrent, converge.
struct Round {
    seq: UpDown,
    par: UpDown,
    cv: UpDown,
}

async fn run() -> Result<(), BenchError> {
    let ctrd = PrivateContainerd::start().await?;
    let containerd = ContainerdClient::new(ctrd.socket(), &unique_name("fleet"))?
        .with_runc_root(ctrd.runc_root());
    containerd.wait_ready(Duration::from_secs(10)).await?;
    let layout = busybox_image_layout(ctrd.dir().join("layout"))?;
    import_oci_layout(&containerd, &layout.dir, IMAGE).await?;
    // The raw side works in its own containerd namespace, so its containers and events
    // never reach the controller (whose orphan pass would otherwise look at them).
    let raw = ContainerdClient::new(ctrd.socket(), &unique_name("fleet-raw"))?
        .with_runc_root(ctrd.runc_root());
    import_oci_layout(&raw, &layout.dir, IMAGE).await?;

    let served = BenchServer::start("converge-bench-fleet-").await?;
    let server = served.address.clone();
    let client = served.client.clone();
    let dir = served.dir().to_path_buf();
    let net = BenchNetwork::new(NET_SUBNET, ctrd.shared_dir().join("run"));
    let data_dir = dir.as_path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let controller = ControllerProcess::spawn(
        env!("CARGO_BIN_EXE_converge"),
        &ctrd,
        &containerd,
        &server,
        &data_dir,
        &net,
        WORKERS,
    )?;
    let pid = controller.pid();

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let watcher = {
        let filter = ListFilter {
            kind: Some(Kind::Sandbox),
            ..ListFilter::default()
        };
        let mut stream = Box::pin(watch_stream(
            client.clone(),
            filter,
            StreamConfig::default(),
        ));
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if events_tx.send(event).is_err() {
                    break;
                }
            }
        })
    };
    let logs = dir.as_path().join("raw-logs");
    std::fs::create_dir_all(&logs)?;

    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    println!(
        "sandbox_fleet: {FLEET} one-container busybox `sleep 1000` sandboxes, {rounds} rounds of \
         (raw sequential, raw {WORKERS} at a time, converge); controller = `converge controller` \
         child (pid {pid}, --workers {WORKERS}, default qps 20/burst 100, own netns+veth+IP per \
         sandbox on {} {NET_SUBNET}); raw = host network, own containerd namespace",
        net.bridge
    );
    // Warm-up, not measured: the controller has connected and the shim binary is cached.
    converge_round(&client, &mut events, &containerd, &net, "warm", pid).await?;
    let start = usage(Some(pid))?;
    println!(
        "controller after warm-up: rss {:.1} MiB, peak {:.1} MiB, cpu {:.2}s",
        mib(start.rss),
        mib(start.peak_rss),
        start.cpu.as_secs_f64()
    );

    let mut rows = Vec::new();
    for round in 0..rounds {
        let tag = format!("r{round}");
        let seq = raw_round(&raw, &logs, &format!("{tag}s"), 1).await?;
        let par = raw_round(&raw, &logs, &format!("{tag}p"), WORKERS).await?;
        let cv = converge_round(&client, &mut events, &containerd, &net, &tag, pid).await?;
        println!(
            "round {round}: start-all  raw seq {:>8.1}ms  raw x{WORKERS} {:>8.1}ms  converge {:>8.1}ms (cpu {:.2}s)  ratio vs x{WORKERS} {:.2}x",
            ms(seq.0.took),
            ms(par.0.took),
            ms(cv.0.took),
            cv.0.cpu.unwrap_or_default().as_secs_f64(),
            ms(cv.0.took) / ms(par.0.took)
        );
        println!(
            "round {round}: delete-all raw seq {:>8.1}ms  raw x{WORKERS} {:>8.1}ms  converge {:>8.1}ms (cpu {:.2}s)  ratio vs x{WORKERS} {:.2}x",
            ms(seq.1.took),
            ms(par.1.took),
            ms(cv.1.took),
            cv.1.cpu.unwrap_or_default().as_secs_f64(),
            ms(cv.1.took) / ms(par.1.took)
        );
        rows.push(Round { seq, par, cv });
    }
    let end = usage(Some(pid))?;
    for (what, down) in [("start-all", false), ("delete-all", true)] {
        let median = |side: fn(&Round) -> &UpDown| {
            let mut v: Vec<Duration> = rows
                .iter()
                .map(|r| {
                    let (up, gone) = side(r);
                    if down { gone.took } else { up.took }
                })
                .collect();
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let (seq, par, cv) = (median(|r| &r.seq), median(|r| &r.par), median(|r| &r.cv));
        println!(
            "median {what:<10}: raw seq {:.1}ms, raw x{WORKERS} {:.1}ms, converge {:.1}ms = {:.2}x raw x{WORKERS}, {:.2}x raw seq",
            ms(seq),
            ms(par),
            ms(cv),
            ms(cv) / ms(par),
            ms(cv) / ms(seq)
        );
    }
    print_controller(&start, &end, &rows);

    watcher.abort();
    controller.stop()?;
    served.stop(Duration::from_secs(20)).await;
    drop(net);
    drop(ctrd);
    Ok(())
}

/// Prints the controller's CPU per batch and its memory over the measured rounds.
fn print_controller(start: &Usage, end: &Usage, rows: &[Round]) {
    let cpu = |pick: fn(&UpDown) -> &Batch| {
        let total: Duration = rows.iter().filter_map(|r| pick(&r.cv).cpu).sum();
        total / rows.len().max(1) as u32
    };
    println!(
        "controller cpu per batch of {FLEET} (mean): start-all {:.2}s, delete-all {:.2}s ({:.1} ms per sandbox start+delete)",
        cpu(|b| &b.0).as_secs_f64(),
        cpu(|b| &b.1).as_secs_f64(),
        ms(cpu(|b| &b.0) + cpu(|b| &b.1)) / FLEET as f64
    );
    println!(
        "controller memory: rss {:.1} MiB after warm-up, {:.1} MiB at the end; peak rss (VmHWM) {:.1} MiB; total cpu over the rounds {:.2}s",
        mib(start.rss),
        mib(end.rss),
        mib(end.peak_rss),
        (end.cpu.saturating_sub(start.cpu)).as_secs_f64()
    );
}

/// The spec of fleet sandbox number `i`.
fn container_json(i: usize) -> serde_json::Value {
    json!({"name": "app", "image": IMAGE, "command": ["sleep", "1000"], "env": {"N": i.to_string()}})
}

/// converge: one PutBatch of [`FLEET`] sandboxes, timed until the watch has shown every
/// one `running`; then one delete each, timed until no container of theirs and no netns
/// pin is left. The controller's CPU time is read from `/proc/<pid>/stat` around each.
async fn converge_round(
    client: &EntityClient,
    events: &mut mpsc::UnboundedReceiver<StreamEvent>,
    containerd: &ContainerdClient,
    net: &BenchNetwork,
    tag: &str,
    pid: i32,
) -> Result<UpDown, BenchError> {
    let ids: Vec<EntityId> = (0..FLEET)
        .map(|i| format!("sandbox/fl-{tag}-{i}").parse())
        .collect::<Result<_, _>>()?;
    let puts: Vec<PutSpec> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| PutSpec {
            id: id.clone(),
            spec: json!({"containers": [container_json(i)]}),
            expected_revision: None,
        })
        .collect();
    let before = usage(Some(pid))?;
    let started = Instant::now();
    client.put_batch(puts).await?;
    let mut waiting: BTreeSet<EntityId> = ids.iter().cloned().collect();
    let mut failed: BTreeSet<EntityId> = BTreeSet::new();
    let running = async {
        while !waiting.is_empty() {
            let Some(event) = events.recv().await else {
                return Err(BenchError::from("watch ended"));
            };
            let entities = match event {
                StreamEvent::Applied(e) => vec![e],
                StreamEvent::Restarted { entities, .. } => entities,
                StreamEvent::Deleted { .. } => continue,
            };
            for e in entities {
                if e.status["phase"] == "running" {
                    waiting.remove(&e.id);
                } else if e.status["phase"] == "failed" && waiting.contains(&e.id) {
                    // The controller retries with backoff; count it and keep waiting.
                    failed.insert(e.id.clone());
                    eprintln!("{} failed (retried): {}", e.id, e.status["message"]);
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(STEP_TIMEOUT, running).await??;
    let up = Batch {
        took: started.elapsed(),
        cpu: usage(Some(pid))?.cpu.checked_sub(before.cpu),
    };
    if !failed.is_empty() {
        println!(
            "{tag}: {} of {FLEET} sandboxes were `failed` before running (retried by the controller)",
            failed.len()
        );
    }

    let before = usage(Some(pid))?;
    let started = Instant::now();
    futures::stream::iter(ids.iter())
        .map(|id| client.delete(id, None))
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let prefix = format!("sandbox/fl-{tag}-");
    let gone = async {
        loop {
            let containers = containerd.list_containers(&[]).await?;
            let left = containers
                .iter()
                .filter(|c| {
                    c.labels
                        .get(LABEL_ENTITY_ID)
                        .is_some_and(|o| o.starts_with(&prefix))
                })
                .count();
            if left == 0 && net.pinned().is_empty() {
                return Ok::<(), BenchError>(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, gone).await??;
    let down = Batch {
        took: started.elapsed(),
        cpu: usage(Some(pid))?.cpu.checked_sub(before.cpu),
    };
    Ok((up, down))
}

/// The raw sequence for the same [`FLEET`] containers (host network), `concurrency` at a
/// time: resolve the image, build the spec, create, start, wait until `Running`; timed
/// until all run. Then removes them (SIGTERM, [`STOP_GRACE`], SIGKILL, task, record,
/// snapshot) with the same concurrency, timed until all are gone.
async fn raw_round(
    containerd: &ContainerdClient,
    logs: &Path,
    tag: &str,
    concurrency: usize,
) -> Result<UpDown, BenchError> {
    let owners: Vec<EntityId> = (0..FLEET)
        .map(|i| format!("sandbox/raw-{tag}-{i}").parse())
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let start_one = |(i, owner): (usize, EntityId)| async move {
        let container: ContainerSpec = serde_json::from_value(container_json(i))?;
        let cid = container_id(&owner, &container.name);
        let image = containerd.resolve_image(IMAGE).await?;
        let spec = build_runtime_spec(&RuntimeSpecInput {
            container_id: &cid,
            namespace: containerd.namespace(),
            hostname: owner.name(),
            image: &image.config,
            container: &container,
            netns: None,
            extra_mounts: Vec::new(),
        })?;
        containerd
            .create_container(&ContainerRequest {
                id: &cid,
                image: IMAGE,
                parent_snapshot: image.top_chain_id(),
                spec: &spec,
                labels: container_labels(&owner, &container.name, 1),
            })
            .await?;
        let mut status = containerd
            .start_task(&cid, &TaskIo::log_file(logs, &cid))
            .await?;
        while status.state != TaskState::Running {
            tokio::time::sleep(Duration::from_millis(2)).await;
            status = containerd
                .task_status(&cid)
                .await?
                .ok_or_else(|| format!("task {cid} vanished"))?;
        }
        Ok::<String, BenchError>(cid)
    };
    let all = futures::stream::iter(owners.into_iter().enumerate())
        .map(start_one)
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>();
    let cids = tokio::time::timeout(STEP_TIMEOUT, all).await??;
    let up = Batch {
        took: started.elapsed(),
        cpu: None,
    };
    let started = Instant::now();
    let all = futures::stream::iter(cids.iter())
        .map(|cid| remove_container(containerd, cid, STOP_GRACE))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>();
    tokio::time::timeout(STEP_TIMEOUT, all).await??;
    let down = Batch {
        took: started.elapsed(),
        cpu: None,
    };
    Ok((up, down))
}
