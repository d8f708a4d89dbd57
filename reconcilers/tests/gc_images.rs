//! Image collection against a private containerd: archived artifacts, images in use, unknown images, LRU eviction under scripted disk pressure, minimum age, dry-run.

mod containerd_support;
mod gc_support;

use std::sync::Arc;
use std::time::Duration;

use containerd_support::{Env, IMAGE, sandbox_name};
use converge_reconcilers::containerd::ImageRecord;
use converge_reconcilers::engine::Executor;
use converge_reconcilers::gc_report::EntitySource;
use converge_reconcilers::images::{DiskUsage, ImageCollector, ImageGcConfig};
use converge_testkit::unique_name;
use gc_support::{ScriptedDisk, ServerEntities, containerd_state};
use tokio::time::Instant;

const MIN_AGE: Duration = Duration::from_secs(120);

fn collector(
    env: &Env,
    entities: Arc<dyn EntitySource>,
    disk: Arc<dyn DiskUsage>,
    unknown_max_age: Option<Duration>,
) -> ImageCollector {
    let config = ImageGcConfig {
        min_age: MIN_AGE,
        unknown_image_max_age: unknown_max_age,
        ..Default::default()
    };
    ImageCollector::new(env.client.clone(), entities, disk, config)
}

/// Another name for the busybox image.
async fn alias(env: &Env, name: &str) {
    let base = env
        .client
        .get_image(IMAGE)
        .await
        .expect("get")
        .expect("busybox");
    env.client
        .put_image(&ImageRecord {
            name: name.to_string(),
            target: base.target,
            labels: Default::default(),
        })
        .await
        .expect("put image");
}

async fn names(env: &Env) -> Vec<String> {
    let mut n: Vec<_> = env
        .client
        .list_images(&[])
        .await
        .expect("images")
        .into_iter()
        .map(|i| i.name)
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn the_image_of_an_archived_artifact_is_removed_and_active_or_unknown_ones_kept() {
    let (env, _image) = Env::with_busybox().await;
    let (old, current) = (
        format!("cluster.local:5000/{}:v1", unique_name("old")),
        format!("cluster.local:5000/{}:v1", unique_name("cur")),
    );
    alias(&env, &old).await;
    alias(&env, &current).await;
    let server = Arc::new(ServerEntities::default());
    server.artifact("old", &old, true);
    server.artifact("current", &current, false);
    let images = collector(&env, server, Arc::new(ScriptedDisk::new(&[10])), None);

    let report = images.pass(&Executor::real()).await.expect("pass");

    assert_eq!(report.summary.deleted, 1, "{report:#?}");
    let left = names(&env).await;
    assert!(!left.contains(&old));
    assert!(left.contains(&current) && left.contains(&IMAGE.to_string()));
}

#[tokio::test]
async fn an_image_a_container_uses_is_kept_even_when_its_artifact_is_archived() {
    let (env, image) = Env::with_busybox().await;
    let id = env.create(&image, &sandbox_name(), &["true"]).await;
    let server = Arc::new(ServerEntities::default());
    server.artifact("busybox", IMAGE, true);
    let images = collector(
        &env,
        server,
        Arc::new(ScriptedDisk::new(&[99])),
        Some(Duration::ZERO),
    );
    let t0 = Instant::now();
    images.pass_at(t0, &Executor::real()).await.expect("pass");

    let report = images
        .pass_at(t0 + 10 * MIN_AGE, &Executor::real())
        .await
        .expect("pass");

    assert_eq!(report.summary.deleted, 0);
    assert!(report.summary.kept_in_use >= 1);
    assert!(names(&env).await.contains(&IMAGE.to_string()));
    env.client
        .remove_container(&id, Duration::ZERO)
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn unknown_images_are_kept_unless_older_than_the_configured_max_age() {
    let (env, _image) = Env::with_busybox().await;
    let stray = format!("docker.io/library/{}:latest", unique_name("stray"));
    alias(&env, &stray).await;
    let server = Arc::new(ServerEntities::default());
    let keep_forever = collector(
        &env,
        server.clone(),
        Arc::new(ScriptedDisk::new(&[10])),
        None,
    );
    let t0 = Instant::now();
    keep_forever
        .pass_at(t0, &Executor::real())
        .await
        .expect("pass");
    keep_forever
        .pass_at(t0 + Duration::from_secs(86_400), &Executor::real())
        .await
        .expect("pass");
    assert!(names(&env).await.contains(&stray));

    let max_age = Duration::from_secs(3600);
    let bounded = collector(
        &env,
        server,
        Arc::new(ScriptedDisk::new(&[10])),
        Some(max_age),
    );
    bounded.pass_at(t0, &Executor::real()).await.expect("pass");
    bounded
        .pass_at(t0 + max_age - Duration::from_secs(1), &Executor::real())
        .await
        .expect("pass");
    assert!(names(&env).await.contains(&stray));
    bounded
        .pass_at(t0 + max_age, &Executor::real())
        .await
        .expect("pass");
    assert!(!names(&env).await.contains(&stray));
}

/// Images a, b, c first seen 10 s apart, e much later; busybox in use by a container.
struct Lru {
    env: Env,
    a: String,
    b: String,
    c: String,
    e: String,
    container: String,
    disk: Arc<ScriptedDisk>,
    images: ImageCollector,
    t0: Instant,
}

async fn lru_setup() -> Lru {
    let (env, image) = Env::with_busybox().await;
    let container = env.create(&image, &sandbox_name(), &["true"]).await;
    let disk = Arc::new(ScriptedDisk::new(&[50]));
    let images = collector(
        &env,
        Arc::new(ServerEntities::default()),
        disk.clone(),
        None,
    );
    let n = |p: &str| format!("cluster.local:5000/{}:v1", unique_name(p));
    let (a, b, c, e) = (n("a"), n("b"), n("c"), n("e"));
    let t0 = Instant::now();
    alias(&env, &a).await;
    images.pass_at(t0, &Executor::real()).await.expect("pass");
    alias(&env, &b).await;
    images
        .pass_at(t0 + Duration::from_secs(10), &Executor::real())
        .await
        .expect("pass");
    alias(&env, &c).await;
    images
        .pass_at(t0 + Duration::from_secs(20), &Executor::real())
        .await
        .expect("pass");
    alias(&env, &e).await;
    images
        .pass_at(t0 + Duration::from_secs(200), &Executor::real())
        .await
        .expect("pass");
    Lru {
        env,
        a,
        b,
        c,
        e,
        container,
        disk,
        images,
        t0,
    }
}

#[tokio::test]
async fn under_disk_pressure_unused_images_go_least_recently_used_first_until_below_low_water() {
    let s = lru_setup().await;
    // 90% at the check, 86% after the first eviction, 79% after the second.
    s.disk.set(&[90, 86, 79]);

    let report = s
        .images
        .pass_at(s.t0 + Duration::from_secs(230), &Executor::real())
        .await
        .expect("pass");

    let order: Vec<_> = report
        .plan
        .actions()
        .iter()
        .map(|a| a.target.clone())
        .collect();
    assert_eq!(
        order,
        vec![format!("image/{}", s.a), format!("image/{}", s.b)],
        "{report:#?}"
    );
    let left = names(&s.env).await;
    assert!(left.contains(&s.c), "stopped at low water");
    assert!(left.contains(&s.e), "younger than min age");
    assert!(left.contains(&IMAGE.to_string()), "in use");
    assert!(
        report
            .kept
            .iter()
            .any(|k| k.target == format!("image/{}", s.e) && k.reason.contains("min age"))
    );
    assert!(report.summary.kept_in_use >= 1);
    s.env
        .client
        .remove_container(&s.container, Duration::ZERO)
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn a_dry_run_under_pressure_plans_evictions_in_lru_order_and_changes_nothing() {
    let s = lru_setup().await;
    s.disk.set(&[90]);
    let before = containerd_state(&s.env.client).await;

    let exec = Executor::dry_run();
    let report = s
        .images
        .pass_at(s.t0 + Duration::from_secs(230), &exec)
        .await
        .expect("pass");

    assert_eq!(containerd_state(&s.env.client).await, before);
    let order: Vec<_> = exec
        .plan()
        .actions()
        .iter()
        .map(|a| a.target.clone())
        .collect();
    // The aliases share busybox's content, so no eviction is projected to free bytes and
    // every eligible image is planned, oldest use first.
    assert_eq!(
        order,
        vec![
            format!("image/{}", s.a),
            format!("image/{}", s.b),
            format!("image/{}", s.c)
        ]
    );
    assert!(report.summary.dry_run);
    s.env
        .client
        .remove_container(&s.container, Duration::ZERO)
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn through_the_engine_a_pass_feeds_the_metrics_and_the_last_pass_board() {
    use converge_reconcilers::engine::run_pass;
    use converge_reconcilers::gc_report::{GcKind, GcMetrics, LastPassBoard};
    use converge_reconcilers::images::ImageReconciler;

    let (env, _image) = Env::with_busybox().await;
    let old = format!("cluster.local:5000/{}:v1", unique_name("old"));
    alias(&env, &old).await;
    let server = Arc::new(ServerEntities::default());
    server.artifact("old", &old, true);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = GcMetrics::register(&mut registry);
    let board = LastPassBoard::default();
    let reconciler = ImageReconciler::new(
        collector(&env, server, Arc::new(ScriptedDisk::new(&[10])), None),
        Some(metrics),
        board.clone(),
    );

    let report = run_pass(
        Arc::new(reconciler),
        vec![GcKind::Images, GcKind::Blobs],
        1,
        Executor::real(),
    )
    .await;

    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let last = board.get(GcKind::Images).expect("images pass recorded");
    assert_eq!(last.deleted, 1);
    assert!(!last.dry_run);
    assert!(
        board.get(GcKind::Blobs).is_none(),
        "other kinds are ignored"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("converge_gc_deleted_total{kind=\"images\"} 1"),
        "{text}"
    );
    assert!(!names(&env).await.contains(&old));
}

#[tokio::test]
async fn the_one_shot_dry_run_pass_plans_archived_images_and_changes_nothing() {
    use converge_reconcilers::images::{ImageGcDeps, image_pass};

    let (env, _image) = Env::with_busybox().await;
    let old = format!("cluster.local:5000/{}:v1", unique_name("old"));
    alias(&env, &old).await;
    let server = Arc::new(ServerEntities::default());
    server.artifact("old", &old, true);
    let deps = ImageGcDeps {
        client: env.client.clone(),
        entities: server,
        disk: Arc::new(ScriptedDisk::new(&[95])),
        config: ImageGcConfig::default(),
    };
    let before = containerd_state(&env.client).await;

    let exec = Executor::dry_run();
    let report = image_pass(&deps, &exec).await.expect("pass");

    assert_eq!(containerd_state(&env.client).await, before);
    let targets: Vec<_> = exec
        .plan()
        .actions()
        .iter()
        .map(|a| a.target.clone())
        .collect();
    assert_eq!(
        targets,
        vec![format!("image/{old}")],
        "pressure evicts nothing younger than min age"
    );
    assert!(report.kept.iter().any(|k| k.reason.contains("min age")));
}
