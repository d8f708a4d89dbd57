//! `converge reconcile --kind orphans|images|blobs --dry-run` as a process against a private containerd and a temp artifact store: each lists what it would collect (or keep, with why) and changes nothing.

mod blob_gc_support;
mod reconcile_support;
mod sandbox_support;

use std::collections::BTreeMap;
use std::process::Output;

use converge_reconcilers::containerd::ContainerdClient;
use converge_testkit::unique_name;
use converge_watch::{EntityId, Kind};
use reconcile_support::{create_orphan, reconcile};
use sandbox_support::{Env, IMAGE};
use serde_json::{Value, json};

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn targets(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(|a| a["target"].as_str().map(String::from))
        .collect()
}

/// Containers (with labels) and images of the namespace, to compare before and after.
async fn containerd_state(
    c: &ContainerdClient,
) -> (
    BTreeMap<String, Vec<(String, String)>>,
    BTreeMap<String, String>,
) {
    let containers = c
        .list_containers(&[])
        .await
        .expect("containers")
        .into_iter()
        .map(|r| {
            let mut labels: Vec<_> = r.labels.into_iter().collect();
            labels.sort();
            (r.id, labels)
        })
        .collect();
    let images = c
        .list_images(&[])
        .await
        .expect("images")
        .into_iter()
        .map(|i| (i.name, i.target.digest))
        .collect();
    (containers, images)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_dry_run_lists_a_container_of_a_missing_sandbox_as_kept_in_grace_and_changes_nothing()
 {
    let env = Env::start().await;
    let ghost = unique_name("ghost");
    let id = create_orphan(&env, &ghost).await;
    let before = containerd_state(&env.containerd).await;

    let out = reconcile(&env, &["--kind", "orphans", "--dry-run", "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing is due inside the grace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    assert_eq!(report["summary"]["kind"], "orphans");
    assert_eq!(report["summary"]["dry_run"], true);
    let kept = report["kept"].as_array().expect("kept list");
    let mine = kept
        .iter()
        .find(|k| k["target"] == format!("container/{id}"))
        .unwrap_or_else(|| panic!("container/{id} not in {report}"));
    let why = mine["reason"].as_str().expect("reason");
    assert!(
        why.contains("does not exist") && why.contains("grace"),
        "{why}"
    );

    let table = reconcile(&env, &["--kind", "orphans", "--dry-run"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("no changes\n"), "{text}");
    assert!(
        text.contains("KEPT") && text.contains(&format!("container/{id}")),
        "{text}"
    );

    assert_eq!(containerd_state(&env.containerd).await, before);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_dry_run_plans_the_image_of_an_archived_artifact_with_its_bytes() {
    let env = Env::start().await;
    let artifact = EntityId::new(Kind::Artifact, unique_name("old")).expect("id");
    let manifest = format!("sha256:{}", "ab".repeat(32));
    env.client
        .put(
            &artifact,
            &json!({"image": IMAGE, "manifest": manifest, "state": "archived"}),
            None,
        )
        .await
        .expect("put artifact");
    let before = containerd_state(&env.containerd).await;

    let out = reconcile(&env, &["--kind", "images", "--dry-run", "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    let target = format!("image/{IMAGE}");
    let action = report["plan"]
        .as_array()
        .expect("plan")
        .iter()
        .find(|a| a["target"] == target.as_str())
        .unwrap_or_else(|| panic!("{target} not planned: {report}"))
        .clone();
    assert_eq!(action["verb"], "delete");
    assert!(action["bytes"].as_u64().unwrap_or(0) > 0, "{action}");
    assert_eq!(report["summary"]["deleted"], 1);

    assert_eq!(containerd_state(&env.containerd).await, before);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blob_dry_run_plans_the_blobs_of_an_archived_artifact_and_touches_no_file() {
    let env = Env::start().await;
    let store = blob_gc_support::Env::new().await;
    let old = store.image("old", &[b"old layer"]).await;
    let live = store.image("live", &[b"live layer"]).await;
    store.age_all_blobs(2 * blob_gc_support::HOUR);
    for (name, image, state) in [("old", &old, "archived"), ("live", &live, "active")] {
        let id = EntityId::new(Kind::Artifact, name).expect("id");
        let spec = json!({"image": format!("cluster.local:5000/{name}:v1"),
            "manifest": image.manifest.as_str(), "state": state});
        env.client
            .put(&id, &spec, None)
            .await
            .expect("put artifact");
    }
    let before = store.snapshot();
    let dir = store.store.root().display().to_string();

    let out = reconcile(
        &env,
        &[
            "--kind",
            "blobs",
            "--artifact-dir",
            &dir,
            "--dry-run",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    let planned = targets(&report["plan"]);
    for d in [&old.manifest, &old.config, &old.layers[0]] {
        assert!(
            planned.contains(&format!("blob/{}", d.as_str())),
            "{d:?} not in {planned:?}"
        );
    }
    for d in [&live.manifest, &live.config, &live.layers[0]] {
        assert!(
            !planned.contains(&format!("blob/{}", d.as_str())),
            "{d:?} planned"
        );
    }
    assert!(
        report["plan"][0]["bytes"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert_eq!(store.snapshot(), before, "no file changed");

    let missing = env.data_dir.join("no-store").display().to_string();
    let refused = reconcile(
        &env,
        &["--kind", "blobs", "--artifact-dir", &missing, "--dry-run"],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no artifact store"));
    assert!(!std::path::Path::new(&missing).exists(), "nothing created");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kind_every_pass_that_applies_runs_and_an_empty_node_exits_zero() {
    let env = Env::start().await;
    let out = reconcile(&env, &["--dry-run", "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = json_of(&out);
    for kind in ["sandbox", "orphans", "images"] {
        assert!(all.get(kind).is_some(), "{kind} missing in {all}");
    }
    assert!(all.get("blobs").is_none(), "no artifact store here: {all}");
    let table = reconcile(&env, &["--dry-run"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("== sandbox ==\nno changes\n"), "{text}");
    assert!(text.contains("== images ==\n"), "{text}");
    env.shutdown().await;
}
