//! Orphan collection against a private containerd: grace from first sight, server re-reads, unlabelled containers, leaked snapshots, dry-run.

mod containerd_support;
mod gc_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use containerd_support::{Env, IMAGE, sandbox_name};
use converge_reconcilers::engine::{Executor, Verb};
use converge_reconcilers::gc_report::EntitySource;
use converge_reconcilers::orphans::{OrphanCollector, OrphanConfig};
use converge_watch::Cache;
use converge_watch::{EntityId, Kind};
use gc_support::{ServerEntities, UnreachableServer, containerd_state, create_with_labels};
use tokio::time::Instant;

const GRACE: Duration = Duration::from_secs(180);

fn collector(env: &Env, entities: Arc<dyn EntitySource>) -> OrphanCollector {
    let config = OrphanConfig {
        node_id: "node-a".into(),
        orphan_grace: GRACE,
        stop_grace: Duration::from_millis(300),
    };
    OrphanCollector::new(env.client.clone(), entities, config)
}

#[tokio::test]
async fn an_orphan_is_kept_inside_its_grace_and_removed_with_its_task_and_snapshot_after_it() {
    let (env, image) = Env::with_busybox().await;
    let sandbox = sandbox_name();
    let id = env.create(&image, &sandbox, &["sleep", "300"]).await;
    env.client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    let orphans = collector(&env, Arc::new(ServerEntities::default()));
    let t0 = Instant::now();

    let first = orphans.pass_at(t0, &Executor::real()).await.expect("pass");
    let inside = orphans
        .pass_at(t0 + GRACE - Duration::from_secs(1), &Executor::real())
        .await
        .expect("pass");
    assert_eq!(first.summary.deleted + inside.summary.deleted, 0);
    assert!(env.client.get_container(&id).await.expect("get").is_some());
    assert!(
        inside
            .kept
            .iter()
            .any(|k| k.target == format!("container/{id}") && k.reason.contains("does not exist"))
    );

    let after = orphans
        .pass_at(t0 + GRACE, &Executor::real())
        .await
        .expect("pass");
    assert_eq!(after.summary.deleted, 1, "{after:#?}");
    assert_eq!(after.plan.actions()[0].verb, Verb::Delete);
    assert!(env.client.get_container(&id).await.expect("get").is_none());
    assert!(env.client.task_status(&id).await.expect("task").is_none());
    assert!(
        env.client
            .stat_snapshot(&id)
            .await
            .expect("snapshot")
            .is_none()
    );
}

#[tokio::test]
async fn the_grace_starts_again_after_a_restart() {
    let (env, image) = Env::with_busybox().await;
    let id = env.create(&image, &sandbox_name(), &["true"]).await;
    let t0 = Instant::now();
    collector(&env, Arc::new(ServerEntities::default()))
        .pass_at(t0, &Executor::real())
        .await
        .expect("pass");
    let restarted = collector(&env, Arc::new(ServerEntities::default()));
    let report = restarted
        .pass_at(t0 + GRACE, &Executor::real())
        .await
        .expect("pass");
    assert_eq!(
        report.summary.deleted, 0,
        "first sight for the new collector"
    );
    assert!(env.client.get_container(&id).await.expect("get").is_some());
}

#[tokio::test]
async fn containers_without_the_owner_label_are_never_touched() {
    let (env, image) = Env::with_busybox().await;
    let id = format!("{}-foreign", sandbox_name());
    let labels = HashMap::from([("app".to_string(), "not-ours".to_string())]);
    create_with_labels(&env.client, &image, IMAGE, &id, labels).await;
    let orphans = collector(&env, Arc::new(ServerEntities::default()));
    let t0 = Instant::now();
    orphans.pass_at(t0, &Executor::real()).await.expect("pass");
    let report = orphans
        .pass_at(t0 + 10 * GRACE, &Executor::real())
        .await
        .expect("pass");
    assert_eq!(report.summary.deleted, 0);
    assert!(report.kept.is_empty());
    assert!(env.client.get_container(&id).await.expect("get").is_some());
}

#[tokio::test]
async fn a_sandbox_a_stale_cache_lost_but_the_server_has_keeps_its_container() {
    let (env, image) = Env::with_busybox().await;
    let sandbox = sandbox_name();
    let id = env.create(&image, &sandbox, &["true"]).await;
    let server = Arc::new(ServerEntities::default());
    server.sandbox(&sandbox, "node-a", "running");
    let stale_cache = Cache::new();
    let sandbox_id = EntityId::new(Kind::Sandbox, &sandbox).expect("id");
    assert!(
        stale_cache.get(&sandbox_id).is_none(),
        "the cache has not seen it"
    );
    let orphans = collector(&env, server);
    let t0 = Instant::now();
    orphans.pass_at(t0, &Executor::real()).await.expect("pass");
    let report = orphans
        .pass_at(t0 + 10 * GRACE, &Executor::real())
        .await
        .expect("pass");
    assert_eq!(report.summary.deleted, 0);
    assert!(env.client.get_container(&id).await.expect("get").is_some());
}

#[tokio::test]
async fn an_unreachable_server_keeps_every_container_and_is_reported() {
    let (env, image) = Env::with_busybox().await;
    let id = env.create(&image, &sandbox_name(), &["true"]).await;
    let orphans = collector(&env, Arc::new(UnreachableServer));
    let t0 = Instant::now();
    orphans.pass_at(t0, &Executor::real()).await.expect("pass");
    let report = orphans
        .pass_at(t0 + 10 * GRACE, &Executor::real())
        .await
        .expect("pass");
    assert_eq!(report.summary.deleted, 0);
    assert!(report.summary.errors >= 1);
    assert!(env.client.get_container(&id).await.expect("get").is_some());
}

#[tokio::test]
async fn containers_of_sandboxes_for_another_node_or_dead_are_removed_after_the_grace() {
    let (env, image) = Env::with_busybox().await;
    let (elsewhere, dead, alive) = (sandbox_name(), sandbox_name(), sandbox_name());
    let server = Arc::new(ServerEntities::default());
    server.sandbox(&elsewhere, "node-b", "running");
    server.sandbox(&dead, "node-a", "dead");
    server.sandbox(&alive, "", "running");
    let elsewhere_id = env.create(&image, &elsewhere, &["true"]).await;
    let dead_id = env.create(&image, &dead, &["true"]).await;
    let alive_id = env.create(&image, &alive, &["true"]).await;
    let orphans = collector(&env, server);
    let t0 = Instant::now();
    orphans.pass_at(t0, &Executor::real()).await.expect("pass");
    let report = orphans
        .pass_at(t0 + GRACE, &Executor::real())
        .await
        .expect("pass");
    assert_eq!(report.summary.deleted, 2, "{report:#?}");
    assert!(
        env.client
            .get_container(&elsewhere_id)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        env.client
            .get_container(&dead_id)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        env.client
            .get_container(&alive_id)
            .await
            .expect("get")
            .is_some()
    );
    let reasons: Vec<_> = report
        .plan
        .actions()
        .iter()
        .map(|a| a.reason.clone())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("node-b")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("dead")), "{reasons:?}");
}

#[tokio::test]
async fn a_snapshot_left_by_a_vanished_container_is_removed_after_the_grace() {
    let (env, image) = Env::with_busybox().await;
    let key = format!("sandbox.{}.app", sandbox_name());
    let labels = HashMap::from([("containerd.io/gc.root".to_string(), "leak".to_string())]);
    env.client
        .prepare_snapshot(&key, image.top_chain_id(), labels, None)
        .await
        .expect("prepare");
    let orphans = collector(&env, Arc::new(ServerEntities::default()));
    let t0 = Instant::now();
    orphans.pass_at(t0, &Executor::real()).await.expect("pass");
    assert!(
        env.client
            .stat_snapshot(&key)
            .await
            .expect("stat")
            .is_some()
    );
    let report = orphans
        .pass_at(t0 + GRACE, &Executor::real())
        .await
        .expect("pass");
    assert_eq!(report.summary.deleted, 1);
    assert!(
        env.client
            .stat_snapshot(&key)
            .await
            .expect("stat")
            .is_none()
    );
    assert!(
        env.client
            .stat_snapshot(image.top_chain_id())
            .await
            .expect("stat")
            .is_some(),
        "image layers untouched"
    );
}

#[tokio::test]
async fn a_dry_run_plans_the_removals_and_changes_nothing_in_containerd() {
    let (env, image) = Env::with_busybox().await;
    let id = env.create(&image, &sandbox_name(), &["sleep", "300"]).await;
    env.client
        .start_task(&id, &env.io(&id))
        .await
        .expect("start");
    let key = format!("sandbox.{}.app", sandbox_name());
    let labels = HashMap::from([("containerd.io/gc.root".to_string(), "leak".to_string())]);
    env.client
        .prepare_snapshot(&key, image.top_chain_id(), labels, None)
        .await
        .expect("prepare");
    let orphans = collector(&env, Arc::new(ServerEntities::default()));
    let t0 = Instant::now();
    let before = containerd_state(&env.client).await;

    let exec = Executor::dry_run();
    orphans.pass_at(t0, &exec).await.expect("pass");
    let report = orphans.pass_at(t0 + GRACE, &exec).await.expect("pass");

    assert_eq!(containerd_state(&env.client).await, before);
    let targets: Vec<_> = exec
        .plan()
        .actions()
        .iter()
        .map(|a| a.target.clone())
        .collect();
    assert_eq!(
        targets,
        vec![format!("container/{id}"), format!("snapshot/{key}")]
    );
    assert!(report.summary.dry_run);
    env.client
        .remove_container(&id, Duration::ZERO)
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn a_container_deletion_on_containerd_enqueues_an_orphan_pass() {
    use converge_reconcilers::engine::{Controller, ControllerConfig};
    use converge_reconcilers::gc_report::{GcKind, LastPassBoard};
    use converge_reconcilers::orphans::{OrphanReconciler, forward_containerd_events};

    let (env, image) = Env::with_busybox().await;
    let reconciler = OrphanReconciler::new(
        collector(&env, Arc::new(ServerEntities::default())),
        None,
        LastPassBoard::default(),
    );
    let controller = Controller::new(reconciler, ControllerConfig::default());
    let queue = controller.queue();
    let events = env.client.subscribe();
    let forward = tokio::spawn(forward_containerd_events(events, controller.trigger()));
    tokio::time::sleep(Duration::from_millis(300)).await; // let the subscription settle
    let id = env.create(&image, &sandbox_name(), &["true"]).await;
    env.client
        .remove_container(&id, Duration::ZERO)
        .await
        .expect("remove");

    let got = tokio::time::timeout(Duration::from_secs(10), queue.get())
        .await
        .expect("a key within 10 s");
    assert_eq!(got, Some(GcKind::Orphans));
    forward.abort();
}

#[tokio::test]
async fn blob_gc_learns_the_manifests_of_images_containers_use() {
    use converge_reconcilers::blobs::ManifestsInUse;

    let (env, image) = Env::with_busybox().await;
    assert!(
        env.client
            .manifests_in_use()
            .await
            .expect("read")
            .is_empty()
    );
    let id = env.create(&image, &sandbox_name(), &["true"]).await;
    let used = env.client.manifests_in_use().await.expect("read");
    let target = env
        .client
        .get_image(IMAGE)
        .await
        .expect("get")
        .expect("image")
        .target
        .digest;
    assert_eq!(used, vec![target]);
    env.client
        .remove_container(&id, Duration::ZERO)
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn a_container_whose_owner_label_is_no_entity_id_is_kept_and_reported() {
    let (env, image) = Env::with_busybox().await;
    let id = format!("{}-odd", sandbox_name());
    let labels = HashMap::from([(
        "runtime.computer/entity-id".to_string(),
        "../not an id".to_string(),
    )]);
    create_with_labels(&env.client, &image, IMAGE, &id, labels).await;
    let orphans = collector(&env, Arc::new(ServerEntities::default()));
    let t0 = Instant::now();
    orphans.pass_at(t0, &Executor::real()).await.expect("pass");
    let report = orphans
        .pass_at(t0 + 10 * GRACE, &Executor::real())
        .await
        .expect("pass");
    assert_eq!(report.summary.deleted, 0);
    assert!(
        report.problems.iter().any(|p| p.contains("no entity id")),
        "{:?}",
        report.problems
    );
    assert!(env.client.get_container(&id).await.expect("get").is_some());
}
