//! Blob GC as the daemon runs it (`run_blob_gc`, the same controller `converge up` runs beside its registry): against a real entity server and a temp artifact store it sweeps the blobs of an archived artifact, keeps the live one's, counts the pass and records it.

mod blob_gc_support;

use std::time::Duration;

use converge::daemon::gc::{GcShared, LastPassFile, last_pass_path, read_last_passes, run_blob_gc};
use converge::server::{StoreUrl, open_store, serve};
use converge_reconcilers::blobs::BlobGcConfig;
use converge_reconcilers::engine::Executor;
use converge_reconcilers::gc_report::{GcKind, GcMetrics, LastPassBoard};
use converge_watch::{EntityClient, EntityId, Kind, ServerAddress};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn connect(server: &ServerAddress) -> EntityClient {
    for _ in 0..200 {
        if let Ok(client) = EntityClient::connect(server).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("entity server at {server} never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gc_sweeps_an_archived_artifacts_blobs_counts_them_and_records_the_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server: ServerAddress = format!("unix:{}", dir.path().join("entity.sock").display())
        .parse()
        .expect("address");
    let store = open_store(&StoreUrl::Redb(dir.path().join("entities.redb")), 100)
        .await
        .expect("store");
    let stop = CancellationToken::new();
    let served = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move { serve(store, &server, stop.cancelled_owned()).await })
    };
    let client = connect(&server).await;

    let blobs = blob_gc_support::Env::new().await;
    let old = blobs.image("old", &[b"old layer"]).await;
    let live = blobs.image("live", &[b"live layer"]).await;
    blobs.age_all_blobs(2 * blob_gc_support::HOUR);
    for (name, image, state) in [("old", &old, "active"), ("live", &live, "active")] {
        let id = EntityId::new(Kind::Artifact, name).expect("id");
        let spec = json!({"image": format!("cluster.local:5000/{name}:v1"),
            "manifest": image.manifest.as_str(), "state": state});
        client.put(&id, &spec, None).await.expect("put artifact");
    }

    let mut registry = Registry::default();
    let shared = GcShared {
        executor: Executor::real(),
        engine: None,
        gc: GcMetrics::register(&mut registry),
        board: LastPassBoard::default(),
        file: LastPassFile::new(last_pass_path(dir.path()), "n1"),
    };
    let gc = tokio::spawn(run_blob_gc(
        blobs.store.clone(),
        client.clone(),
        BlobGcConfig {
            blob_grace: blob_gc_support::HOUR,
        },
        Duration::from_secs(3600),
        shared.clone(),
        stop.clone(),
    ));
    // The first pass runs at once and keeps everything: both artifacts are active.
    for _ in 0..600 {
        if shared.board.get(GcKind::Blobs).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = shared.board.get(GcKind::Blobs).expect("a first pass");
    assert_eq!(first.deleted, 0, "{first:?}");
    assert!(blobs.has_blob(&old.manifest));

    // Archiving triggers a pass through the artifact watch, well before the hour.
    let id = EntityId::new(Kind::Artifact, "old").expect("id");
    let spec = json!({"image": "cluster.local:5000/old:v1",
        "manifest": old.manifest.as_str(), "state": "archived"});
    client.put(&id, &spec, None).await.expect("archive");
    for _ in 0..600 {
        if !blobs.has_blob(&old.manifest) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in [&old.manifest, &old.config, &old.layers[0]] {
        assert!(!blobs.has_blob(d), "{d:?} still there");
    }
    for d in [&live.manifest, &live.config, &live.layers[0]] {
        assert!(blobs.has_blob(d), "{d:?} swept");
    }

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("converge_gc_deleted_total{kind=\"blobs\"} 3"),
        "{text}"
    );
    let record = read_last_passes(&last_pass_path(dir.path()))
        .expect("read")
        .expect("record");
    assert_eq!(record.node, "n1");
    assert!(
        record
            .passes
            .iter()
            .any(|p| p.kind == GcKind::Blobs && p.deleted == 3),
        "{record:?}"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), gc)
        .await
        .expect("blob GC stops")
        .expect("task");
    let _ = served.await;
}
