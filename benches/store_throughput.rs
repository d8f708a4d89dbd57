//! Bench: entity put throughput through the gRPC API (redb and etcd stores) beside etcd's
//! own put throughput, measured in the same run at the same concurrency.

mod bench_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{BenchError, connect};
use converge::server::{StoreUrl, open_store, serve};
use converge_testkit::etcd::EtcdCluster;
use converge_watch::{EntityClient, EntityId, ServerAddress};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long each measurement runs.
const WINDOW: Duration = Duration::from_secs(3);
/// Distinct ids each writer cycles through (keeps the store small).
const IDS_PER_WRITER: usize = 64;
/// Concurrency levels measured.
const CONCURRENCY: [usize; 2] = [1, 16];

fn main() -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

/// The spec every put writes (a one-container sandbox, about 100 bytes of JSON).
fn spec(i: usize) -> serde_json::Value {
    json!({"containers": [{"name": "app", "image": "test.local/busybox:latest",
        "env": {"N": i.to_string()}}]})
}

async fn run() -> Result<(), BenchError> {
    println!("store_throughput: {WINDOW:?} per figure, puts/s (higher is better)");
    let etcd = EtcdCluster::start(1).await?;
    println!(
        "etcd: single member at {:?}, data in {}",
        etcd.endpoints(),
        etcd.dir().display()
    );
    let dir = tempfile::Builder::new()
        .prefix("converge-bench-tp-")
        .tempdir()?;
    let redb = Server::start(
        StoreUrl::Redb(dir.path().join("entities.redb")),
        dir.path(),
        "redb",
    )
    .await?;
    let on_etcd = Server::start(StoreUrl::Etcd(etcd.endpoints()), dir.path(), "etcd").await?;
    let direct = etcd_client::Client::connect(etcd.endpoints(), None).await?;
    for concurrency in CONCURRENCY {
        let baseline = etcd_direct(&direct, concurrency).await?;
        let via_etcd = converge_puts(&on_etcd.client, concurrency, "e").await?;
        let via_redb = converge_puts(&redb.client, concurrency, "r").await?;
        println!(
            "concurrency {concurrency:>2}: etcd-client direct put (baseline) {baseline:>9.0}/s"
        );
        println!(
            "concurrency {concurrency:>2}: converge put, etcd store           {via_etcd:>9.0}/s ({:.2}x baseline)",
            via_etcd / baseline
        );
        println!(
            "concurrency {concurrency:>2}: converge put, redb store           {via_redb:>9.0}/s ({:.2}x baseline)",
            via_redb / baseline
        );
    }
    redb.stop().await;
    on_etcd.stop().await;
    drop(etcd);
    Ok(())
}

/// An in-process entity server on a temp unix socket.
struct Server {
    client: EntityClient,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(url: StoreUrl, dir: &std::path::Path, name: &str) -> Result<Server, BenchError> {
        let address: ServerAddress =
            format!("unix:{}", dir.join(format!("{name}.sock")).display()).parse()?;
        let store = open_store(&url, 1000).await?;
        let stop = CancellationToken::new();
        let task = {
            let address = address.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(store, &address, stop.cancelled_owned()).await {
                    eprintln!("entity server failed: {e}");
                }
            })
        };
        let client = connect(&address).await?;
        Ok(Server { client, stop, task })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Puts per second through the entity API with `concurrency` writers for [`WINDOW`].
async fn converge_puts(
    client: &EntityClient,
    concurrency: usize,
    tag: &str,
) -> Result<f64, BenchError> {
    let started = Instant::now();
    let deadline = started + WINDOW;
    let mut writers = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let ids: Vec<EntityId> = (0..IDS_PER_WRITER)
            .map(|i| format!("sandbox/tp-{tag}{concurrency}-{w}-{i}").parse())
            .collect::<Result<_, _>>()?;
        writers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let i = done as usize;
                client.put(&ids[i % ids.len()], &spec(i), None).await?;
                done += 1;
            }
            Ok::<u64, BenchError>(done)
        }));
    }
    let mut total = 0;
    for writer in writers {
        total += writer.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Puts per second straight to etcd with `concurrency` writers for [`WINDOW`]: the value
/// is an entity's JSON of the same size the entity puts store.
async fn etcd_direct(client: &etcd_client::Client, concurrency: usize) -> Result<f64, BenchError> {
    let started = Instant::now();
    let deadline = started + WINDOW;
    let value = Arc::new(
        json!({"id": "sandbox/x", "revision": 1, "spec": spec(0), "status": {}}).to_string(),
    );
    let mut writers = Vec::new();
    for w in 0..concurrency {
        let mut kv = client.kv_client();
        let value = Arc::clone(&value);
        writers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let key = format!(
                    "/bench/c{concurrency}/{w}/{}",
                    done as usize % IDS_PER_WRITER
                );
                kv.put(key, value.as_bytes(), None).await?;
                done += 1;
            }
            Ok::<u64, BenchError>(done)
        }));
    }
    let mut total = 0;
    for writer in writers {
        total += writer.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
