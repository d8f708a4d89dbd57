//! The orphan pass over 1,000 real container records (with rootfs snapshots, no tasks) of 500 sandboxes, half of which exist on the entity server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use converge_reconcilers::containerd::{ContainerdClient, import_oci_layout};
use converge_reconcilers::engine::Executor;
use converge_reconcilers::gc_report::EntitySource;
use converge_reconcilers::orphans::{OrphanCollector, OrphanConfig};
use converge_testkit::{PrivateContainerd, busybox_image_layout, unique_name};
use converge_watch::client::PutSpec;
use converge_watch::{EntityId, Kind};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use super::images::create_container;
use crate::bench_support::BenchError;
use crate::{BenchServer, describe, measure, measure_repeated, print_sweep};

/// Sandboxes owning containers; every even one exists on the server.
const SANDBOXES: usize = 500;
/// Containers per sandbox.
const PER_SANDBOX: usize = 2;
/// Concurrent creates while building.
const CREATES_AT_ONCE: usize = 4;
/// Name busybox is imported under.
const IMAGE: &str = "bench.local/busybox:latest";
/// The node the collector runs as.
const NODE: &str = "bench-node";

/// Builds the containers and sandboxes, then measures listing, plan and sweep.
pub async fn run() -> Result<(), BenchError> {
    let ctrd = PrivateContainerd::start().await?;
    let client = ContainerdClient::new(ctrd.socket(), &unique_name("gcorph"))?
        .with_runc_root(ctrd.runc_root());
    client.wait_ready(Duration::from_secs(10)).await?;
    let layout = busybox_image_layout(ctrd.dir().join("layout"))?;
    import_oci_layout(&client, &layout.dir, IMAGE).await?;
    let server = BenchServer::start("converge-bench-gc-").await?;

    let built = Instant::now();
    let owned: Vec<(String, String)> = (0..SANDBOXES)
        .flat_map(|k| (0..PER_SANDBOX).map(move |c| (format!("orph-{k}"), format!("c{c}"))))
        .collect();
    futures::stream::iter(owned.iter())
        .map(|(owner, name)| create_container(&client, IMAGE, owner, name))
        .buffer_unordered(CREATES_AT_ONCE)
        .try_collect::<Vec<_>>()
        .await?;
    let puts = (0..SANDBOXES)
        .step_by(2)
        .map(|k| -> Result<PutSpec, BenchError> {
            Ok(PutSpec {
                id: EntityId::new(Kind::Sandbox, format!("orph-{k}"))?,
                spec: json!({"node": NODE, "containers": [
                    {"name": "c0", "image": IMAGE, "command": ["sleep", "300"]},
                    {"name": "c1", "image": IMAGE, "command": ["sleep", "300"]}]}),
                expected_revision: None,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    server.put_all(puts).await?;
    println!(
        "--- orphans: {} container records with rootfs snapshots, no tasks ({PER_SANDBOX} per \
         sandbox, created {CREATES_AT_ONCE} at a time), of {SANDBOXES} sandboxes; every other \
         sandbox exists on the server, so {} containers are orphans; orphan grace 0 (so the \
         plan has every removal), no network sweep; built in {:.1}s ---",
        owned.len(),
        owned.len() / 2,
        built.elapsed().as_secs_f64()
    );

    let (listing, _) = measure_repeated("baseline: ListSnapshots + ListContainers", || async {
        Ok(client.list_snapshots().await?.len() + client.list_containers(&[]).await?.len())
    })
    .await?;
    let entities = Arc::new(server.client.clone()) as Arc<dyn EntitySource>;
    let config = OrphanConfig {
        node_id: NODE.into(),
        orphan_grace: Duration::ZERO,
        stop_grace: Duration::from_millis(100),
    };
    let collector = || OrphanCollector::new(client.clone(), entities.clone(), config.clone());
    let (plan, report) = measure_repeated("plan (dry-run orphan pass)", || async {
        Ok(collector().pass(&Executor::dry_run()).await?)
    })
    .await?;
    println!("{:<40} {}", "", describe(&report));
    let sweep = measure(async { Ok(collector().pass(&Executor::real()).await?) }).await?;
    print_sweep(&sweep, &plan, &listing);
    println!(
        "containers left after the sweep: {}",
        client.list_containers(&[]).await?.len()
    );
    server.stop(Duration::from_secs(10)).await;
    drop(ctrd);
    Ok(())
}
