//! `converge reconcile --kind sandbox --dry-run` with sandbox networking (its own bridge and
//! subnet): for a sandbox whose network does not exist yet it lists the bridge, the
//! address allocation, the namespace and the veth it would create, and changes nothing
//! (no bridge, no pin, no link, the allocation file byte for byte the same).

mod reconcile_support;
mod sandbox_support;

use std::path::Path;
use std::process::Output;

use converge_reconcilers::network::network_name;
use converge_testkit::unique_name;
use sandbox_support::{Env, IMAGE, NODE, TestNetwork, sandbox_id};
use serde_json::{Value, json};

fn reconcile(env: &Env, net: &TestNetwork) -> Output {
    reconcile_support::reconcile_command(env)
        .args(["--bridge", &net.bridge, "--subnet", &net.subnet])
        .arg("--run-dir")
        .arg(env.ctrd.shared_dir().join("run"))
        .args(["--kind", "sandbox", "--dry-run", "-o", "json"])
        .output()
        .expect("run converge reconcile")
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_the_network_steps_of_a_new_sandbox_and_changes_nothing() {
    let env = Env::start().await;
    let net = TestNetwork::fresh();
    let name = unique_name("drynet");
    let before = env
        .apply(
            &name,
            json!({"node": NODE, "containers": [{"name": "app", "image": IMAGE,
                "command": ["sleep", "1000"]}]}),
        )
        .await;
    // An allocation file that already holds another sandbox's address must stay as it is.
    let ipam = env.data_dir.join("network").join("ipam.json");
    std::fs::create_dir_all(ipam.parent().expect("dir")).expect("network dir");
    let prefix = net.prefix.clone();
    let other = json!({"version": 1, "subnet": net.subnet, "last": format!("{prefix}2"),
        "by_sandbox": {"sandbox/other": format!("{prefix}2")}});
    std::fs::write(&ipam, serde_json::to_vec(&other).expect("json")).expect("write ipam");
    let ipam_before = std::fs::read(&ipam).expect("read ipam");

    let out = reconcile(&env, &net);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    let steps: Vec<(String, String)> = plan
        .as_array()
        .expect("list")
        .iter()
        .map(|a| {
            (
                a["verb"].as_str().unwrap_or("").to_string(),
                a["target"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let veth = network_name(&format!("sandbox/{name}"));
    for (verb, target) in [
        ("create", format!("bridge/{}", net.bridge)),
        ("create", format!("network/{veth}")),
        ("create", format!("ip/sandbox/{name}")),
        ("create", format!("netns/{veth}")),
        ("create", format!("veth/{veth}")),
        ("create", format!("container/sandbox.{name}.app")),
    ] {
        assert!(
            steps.contains(&(verb.to_string(), target.clone())),
            "{verb} {target} missing in {steps:?}"
        );
    }

    assert!(!link_exists(&net.bridge), "no bridge was made");
    assert!(!link_exists(&veth), "no veth was made");
    let pin = env.ctrd.shared_dir().join("run").join("netns").join(&veth);
    assert!(!pin.exists(), "no namespace was pinned");
    assert_eq!(
        std::fs::read(&ipam).expect("read ipam"),
        ipam_before,
        "the allocation file is untouched"
    );
    assert!(env.containers_of(&name).await.is_empty(), "no container");
    let after = env
        .client
        .get(&sandbox_id(&name))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(after.revision, before.revision, "no status written");
    env.shutdown().await;
}
