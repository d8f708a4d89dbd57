//! Bench: time from "start this sandbox" to "its task runs", raw containerd calls (the
//! baseline) against converge's apply-to-running, interleaved in one run on one containerd;
//! host network, and (`2c+port+net`) converge with its own netns, veth and IP per sandbox.

mod bench_support;

use std::path::Path;
use std::time::{Duration, Instant};

use bench_support::controller::InProcessController;
use bench_support::net::BenchNetwork;
use bench_support::server::BenchServer;
use bench_support::{BenchError, Summary, ms, remove_container, report};
use converge::daemon::flags::{ControllerFlags, DaemonConfig};
use converge_reconcilers::containerd::{
    ContainerRequest, ContainerdClient, LABEL_ENTITY_ID, RuntimeSpecInput, TaskIo, TaskState,
    build_runtime_spec, container_id, container_labels, import_oci_layout,
};
use converge_reconcilers::network::network_name;
use converge_testkit::{PrivateContainerd, busybox_image_layout, unique_name};
use converge_watch::spec::ContainerSpec;
use converge_watch::{
    EntityClient, EntityId, Kind, ListFilter, StreamConfig, StreamEvent, watch_stream,
};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Name busybox is imported under.
const IMAGE: &str = "bench.local/busybox:latest";
/// Interleaved runs of each variant (`BENCH_RUNS` overrides it for a quick smoke run).
const RUNS: usize = 30;
/// Longest any one start or clean-up may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace before SIGKILL when the bench itself removes a container (busybox `sleep` as pid 1
/// ignores SIGTERM, so this is simply how long each clean-up takes).
const RAW_GRACE: Duration = Duration::from_millis(100);
/// Subnet of the networked shape's bridge (no test uses 10.199.240.0/24).
const NET_SUBNET: &str = "10.199.240.0/24";

fn main() -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), BenchError> {
    let ctrd = PrivateContainerd::start().await?;
    let containerd = ContainerdClient::new(ctrd.socket(), &unique_name("bench"))?
        .with_runc_root(ctrd.runc_root());
    containerd.wait_ready(Duration::from_secs(10)).await?;
    let layout = busybox_image_layout(ctrd.dir().join("layout"))?;
    import_oci_layout(&containerd, &layout.dir, IMAGE).await?;
    // The raw side works in its own containerd namespace, so its containers and events
    // never reach the controller (whose orphan pass would otherwise look at them).
    let raw_containerd = ContainerdClient::new(ctrd.socket(), &unique_name("bench-raw"))?
        .with_runc_root(ctrd.runc_root());
    import_oci_layout(&raw_containerd, &layout.dir, IMAGE).await?;

    let served = BenchServer::start("converge-bench-sb-").await?;
    let server = served.address.clone();
    let client = served.client.clone();
    let dir = served.dir().to_path_buf();
    // Stops the in-process controllers (the server has its own).
    let stop = CancellationToken::new();
    let data_dir = dir.as_path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    // The host-network shapes run under one controller; the networked shape under a second
    // one (started after the first stopped) on the bench's own bridge.
    let net = BenchNetwork::new(NET_SUBNET, ctrd.shared_dir().join("run"));
    let host_config = controller_config(
        &ctrd,
        &containerd,
        &data_dir,
        &["--host-network".to_string()],
    )?;
    let net_config = controller_config(&ctrd, &containerd, &data_dir, &net.flags())?;
    let mut controller = Some(InProcessController::start(host_config, &server, &stop));
    let mut net_config = Some(net_config);
    // One watch for the whole run; each converge run reads it until its sandbox runs.
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

    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RUNS);
    println!(
        "sandbox_start: busybox containers, host network (converge side of +net: own netns/veth/IP on bridge {} {NET_SUBNET}), {runs} interleaved runs each (raw, converge, raw, ...)",
        net.bridge
    );
    // One unmeasured run of each warms containerd, the shim binary and the controller.
    // `BENCH_SHAPES=2c+port,2c+port+net` measures only those shapes.
    let only = std::env::var("BENCH_SHAPES").ok();
    let wanted = |shape: &Shape| {
        only.as_ref()
            .is_none_or(|o| o.split(',').any(|l| l == shape.label()))
    };
    for shape in SHAPES.into_iter().filter(wanted) {
        if shape.net
            && let Some(config) = net_config.take()
        {
            if let Some(running) = controller.take() {
                running.stop().await;
            }
            controller = Some(InProcessController::start(config, &server, &stop));
        }
        let sandbox_net = shape.net.then_some(&net);
        raw_start(&raw_containerd, &logs, "warm", shape).await?;
        converge_start(
            &client,
            &mut events,
            &containerd,
            sandbox_net,
            "warm",
            shape,
        )
        .await?;
        let mut raw = Vec::with_capacity(runs);
        let mut converge = Vec::with_capacity(runs);
        for i in 0..runs {
            raw.push(raw_start(&raw_containerd, &logs, &format!("{i}"), shape).await?);
            converge.push(
                converge_start(
                    &client,
                    &mut events,
                    &containerd,
                    sandbox_net,
                    &format!("{i}"),
                    shape,
                )
                .await?,
            );
        }
        let label = shape.label();
        println!("--- {} ---", shape.describe());
        let r = report(
            &format!("raw containerd sequence ({label}, baseline)"),
            &mut raw,
        );
        let c = report(
            &format!("converge apply-to-running ({label})"),
            &mut converge,
        );
        if let (Some(r), Some(c)) = (r, c) {
            print_ratio(&r, &c);
        }
    }
    if let Some(running) = controller.take() {
        running.stop().await;
    }
    stop.cancel();
    watcher.abort();
    served.stop(Duration::from_secs(20)).await;
    drop(net);
    drop(ctrd);
    Ok(())
}

fn print_ratio(raw: &Summary, converge: &Summary) {
    println!(
        "ratio converge/raw: p50 {:.2}x  p99 {:.2}x  mean {:.2}x  (overhead p50 {:+.1}ms)",
        ms(converge.p50) / ms(raw.p50),
        ms(converge.p99) / ms(raw.p99),
        ms(converge.mean) / ms(raw.mean),
        ms(converge.p50) - ms(raw.p50),
    );
}

/// The controller as `converge up` would run it here, built through the real flag parser:
/// single node, 2 workers, short stop grace, plus `extra` (the network flags).
fn controller_config(
    ctrd: &PrivateContainerd,
    containerd: &ContainerdClient,
    data_dir: &Path,
    extra: &[String],
) -> Result<DaemonConfig, BenchError> {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        flags: ControllerFlags,
    }
    let args: Vec<String> = vec![
        "bench".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--containerd-socket".into(),
        ctrd.socket().display().to_string(),
        "--namespace".into(),
        containerd.namespace().to_string(),
        "--node-id".into(),
        "bench-node".into(),
        "--single-node".into(),
        "--runc-root".into(),
        ctrd.runc_root().display().to_string(),
        "--workers".into(),
        "2".into(),
        "--stop-grace".into(),
        "100ms".into(),
    ];
    let args: Vec<String> = args.into_iter().chain(extra.iter().cloned()).collect();
    let flags = <Flags as clap::Parser>::try_parse_from(args)?;
    Ok(flags.flags.validate()?)
}

/// What one sandbox holds.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Number of containers.
    containers: usize,
    /// The first container is busybox `httpd` declaring one port (awaited until it
    /// listens); the others `sleep 1000`.
    port: bool,
    /// converge gives the sandbox its own netns, veth and IP (the raw side stays on the
    /// host network: it has no equivalent).
    net: bool,
}

/// The shapes measured, in order.
const SHAPES: [Shape; 4] = [
    Shape {
        containers: 1,
        port: false,
        net: false,
    },
    Shape {
        containers: 2,
        port: false,
        net: false,
    },
    Shape {
        containers: 2,
        port: true,
        net: false,
    },
    Shape {
        containers: 2,
        port: true,
        net: true,
    },
];

impl Shape {
    fn label(&self) -> String {
        format!(
            "{}c{}{}",
            self.containers,
            if self.port { "+port" } else { "" },
            if self.net { "+net" } else { "" }
        )
    }

    fn describe(&self) -> String {
        if self.net {
            format!(
                "{} containers, the first serving one port (httpd), awaited until it listens; \
                 converge: own netns+veth+IP, httpd on all addresses of the netns; raw: host \
                 network, httpd on 127.0.0.1",
                self.containers
            )
        } else if self.port {
            format!(
                "{} containers, the first serving one port (httpd), awaited until it listens",
                self.containers
            )
        } else {
            format!("{} container(s), `sleep 1000`", self.containers)
        }
    }

    /// The containers as sandbox spec JSON; `port` is the one the first container serves
    /// when the shape has a port. `in_netns`: the sandbox has its own netns, so httpd
    /// listens on all its addresses (else on host loopback).
    fn containers_json(&self, port: u16, in_netns: bool) -> Vec<serde_json::Value> {
        (0..self.containers)
            .map(|i| {
                let name = format!("c{i}");
                if self.port && i == 0 {
                    let listen = if in_netns {
                        port.to_string()
                    } else {
                        format!("127.0.0.1:{port}")
                    };
                    json!({"name": name, "image": IMAGE,
                        "command": ["httpd", "-f", "-p", listen, "-h", "/"],
                        "ports": [{"port": port}]})
                } else {
                    json!({"name": name, "image": IMAGE, "command": ["sleep", "1000"]})
                }
            })
            .collect()
    }
}

/// A loopback TCP port nothing listens on right now.
fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The raw sequence, timed: resolve the image, build the runtime spec, create each
/// container (record + snapshot), create and start its task, until every task runs and
/// a declared port accepts connections.
/// Removes the containers afterwards (not timed).
async fn raw_start(
    containerd: &ContainerdClient,
    logs: &Path,
    run: &str,
    shape: Shape,
) -> Result<Duration, BenchError> {
    let owner: EntityId = format!("sandbox/raw{}-{run}", shape.label().replace('+', "")).parse()?;
    let port = free_port()?;
    let containers: Vec<ContainerSpec> = shape
        .containers_json(port, false)
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()?;
    let ids: Vec<String> = containers
        .iter()
        .map(|c| container_id(&owner, &c.name))
        .collect();
    let started = Instant::now();
    let timed = async {
        let image = containerd.resolve_image(IMAGE).await?;
        for (container, cid) in containers.iter().zip(&ids) {
            let name = &container.name;
            let spec = build_runtime_spec(&RuntimeSpecInput {
                container_id: cid,
                namespace: containerd.namespace(),
                hostname: owner.name(),
                image: &image.config,
                container,
                netns: None,
                extra_mounts: Vec::new(),
            })?;
            containerd
                .create_container(&ContainerRequest {
                    id: cid,
                    image: IMAGE,
                    parent_snapshot: image.top_chain_id(),
                    spec: &spec,
                    labels: container_labels(&owner, name, 1),
                })
                .await?;
            let mut status = containerd
                .start_task(cid, &TaskIo::log_file(logs, cid))
                .await?;
            while status.state != TaskState::Running {
                tokio::time::sleep(Duration::from_millis(2)).await;
                status = containerd
                    .task_status(cid)
                    .await?
                    .ok_or_else(|| format!("task {cid} vanished"))?;
            }
        }
        // Declared port: wait until it accepts, as the controller waits until it listens.
        if shape.port {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok::<(), BenchError>(())
    };
    tokio::time::timeout(STEP_TIMEOUT, timed).await??;
    let took = started.elapsed();
    for cid in &ids {
        remove_container(containerd, cid, RAW_GRACE).await?;
    }
    Ok(took)
}

/// converge, timed: put a sandbox entity and wait on the watch until its status says
/// `phase: running`. Deletes it afterwards and waits until its containers (and, with `net`,
/// its pinned netns) are gone (not timed).
async fn converge_start(
    client: &EntityClient,
    events: &mut mpsc::UnboundedReceiver<StreamEvent>,
    containerd: &ContainerdClient,
    net: Option<&BenchNetwork>,
    run: &str,
    shape: Shape,
) -> Result<Duration, BenchError> {
    let id: EntityId = format!("sandbox/cv{}-{run}", shape.label().replace('+', "")).parse()?;
    let containers = shape.containers_json(free_port()?, net.is_some());
    let spec = json!({ "containers": containers });
    let started = Instant::now();
    client.put(&id, &spec, None).await?;
    let running = async {
        while let Some(event) = events.recv().await {
            let entity = match event {
                StreamEvent::Applied(e) => e,
                StreamEvent::Restarted { entities, .. } => {
                    match entities.into_iter().find(|e| e.id == id) {
                        Some(e) => e,
                        None => continue,
                    }
                }
                StreamEvent::Deleted { .. } => continue,
            };
            if entity.id == id && entity.status["phase"] == "running" {
                return Ok(());
            }
            if entity.id == id && entity.status["phase"] == "failed" {
                return Err(BenchError::from(format!("{id} failed: {}", entity.status)));
            }
        }
        Err(BenchError::from("watch ended"))
    };
    tokio::time::timeout(STEP_TIMEOUT, running).await??;
    let took = started.elapsed();
    client.delete(&id, None).await?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let owner = id.to_string();
    loop {
        let left = containerd
            .list_containers(&[(LABEL_ENTITY_ID, &owner)])
            .await?;
        let pinned = net.is_some_and(|n| n.is_pinned(&network_name(&owner)));
        if left.is_empty() && !pinned {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{id}: containers {left:?} (netns pinned: {pinned}) still there after delete"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(took)
}
