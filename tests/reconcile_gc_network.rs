//! `converge reconcile --kind orphans --dry-run` sweeps leaked sandbox networks too: a veth, pinned netns and IP allocation of a sandbox that does not exist are planned (exit 2) and nothing changes (needs root).
//!
//! The test uses its own bridge (`cvt<random>`), the subnet `10.199.237.0/24` (no other
//! test uses it), and its own data and run dirs; a guard unpins the namespace and deletes
//! the veth and bridge even when the test fails.

mod sandbox_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use converge_reconcilers::network::{NetnsDir, NetworkConfig, NodeNetwork, network_name};
use converge_testkit::unique_name;
use converge_watch::{EntityId, Kind};
use sandbox_support::{Env, NODE};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_converge");
/// The subnet of this test; unique among the tests.
const SUBNET: &str = "10.199.237.0/24";

/// Whether the test can run here (it needs root for netns and links); prints why not.
fn can_run() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipping: the network sweep test needs root");
    }
    root
}

/// The test's bridge and run dir; on drop, unpins every namespace under the run dir and
/// deletes their veths and the bridge.
struct NetworkGuard {
    config: NetworkConfig,
}

impl NetworkGuard {
    fn new(run_dir: PathBuf) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(unique_name("rgn"));
        NetworkGuard {
            config: NetworkConfig {
                bridge: format!("cvt{:08x}", seed as u32),
                subnet: SUBNET.parse().expect("subnet"),
                run_dir,
            },
        }
    }
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let run_dir = self.config.run_dir.clone();
        // Drop may run inside the test's runtime: unpin on a thread with its own.
        let unpinned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            let dir = NetnsDir::new(&run_dir);
            let names = dir.list().unwrap_or_default();
            runtime.block_on(async {
                for name in &names {
                    if let Err(e) = dir.delete(name).await {
                        eprintln!("cleanup: unpinning {name}: {e}");
                    }
                }
            });
            names
        })
        .join()
        .unwrap_or_default();
        for link in unpinned.iter().chain(std::iter::once(&self.config.bridge)) {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Every file and dir under `root`: path -> (size, mtime, contents of regular files).
fn files_under(root: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let mtime = meta.modified().expect("mtime");
            let contents = if meta.is_file() {
                std::fs::read(&path).unwrap_or_default()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                dirs.push(path.clone());
            }
            out.insert(path, (meta.len(), mtime, contents));
        }
    }
    out
}

/// For each of `links`: present, its interface index and its master (if any). Not its
/// operstate: the kernel updates that asynchronously (linkwatch, up to a second after a
/// veth's peer comes up), so it may change during the test without anyone touching the link.
fn links_state(links: &[&str]) -> Vec<(String, bool, String, Option<PathBuf>)> {
    links
        .iter()
        .map(|name| {
            let dir = Path::new("/sys/class/net").join(name);
            (
                name.to_string(),
                dir.exists(),
                std::fs::read_to_string(dir.join("ifindex")).unwrap_or_default(),
                std::fs::read_link(dir.join("master")).ok(),
            )
        })
        .collect()
}

fn reconcile(env: &Env, net: &NetworkConfig, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--server")
        .arg(env.server.to_string())
        .arg("reconcile")
        .args(["--kind", "orphans", "--dry-run"])
        .arg("--containerd-socket")
        .arg(env.ctrd.socket())
        .args(["--namespace", env.containerd.namespace(), "--node-id", NODE])
        .arg("--data-dir")
        .arg(&env.data_dir)
        .args(["--bridge", &net.bridge, "--subnet", SUBNET])
        .arg("--run-dir")
        .arg(&net.run_dir)
        .args(extra)
        .env_remove("CONVERGE_SERVER")
        .output()
        .expect("run converge reconcile")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_shot_orphan_dry_run_lists_a_leaked_network_of_a_missing_sandbox_and_changes_nothing()
 {
    if !can_run() {
        return;
    }
    let env = Env::start().await;
    let guard = NetworkGuard::new(env.data_dir.join("run"));
    let net = guard.config.clone();
    // A network the sandbox reconciler would have made, for a sandbox the server never had.
    let ghost = EntityId::new(Kind::Sandbox, unique_name("ghost")).expect("sandbox id");
    let node = NodeNetwork::open(&net, &env.data_dir)
        .await
        .expect("open node network");
    let made = node.connect(&ghost.to_string()).await.expect("connect");
    let name = network_name(&ghost.to_string());
    let ip = made.ip.to_string();
    drop(node);

    let netns = net.run_dir.join("netns").join(&name);
    assert!(netns.exists(), "netns pinned at {}", netns.display());
    let links = [name.as_str(), net.bridge.as_str()];
    let files_before = files_under(&env.data_dir);
    let links_before = links_state(&links);
    assert!(links_before[0].1, "veth {name} exists");
    let containers = || async {
        let list = env.containerd.list_containers(&[]).await.expect("list");
        list.into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    let containers_before = containers().await;

    let out = reconcile(&env, &net, &["-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a leaked network is a change: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    assert_eq!(report["summary"]["dry_run"], true, "{report}");
    let plan = report["plan"].as_array().expect("plan");
    let delete = plan
        .iter()
        .find(|a| a["target"] == format!("network/{name}"))
        .unwrap_or_else(|| panic!("network/{name} not planned: {report}"));
    assert_eq!(delete["verb"], "delete");
    let why = delete["reason"].as_str().expect("reason");
    assert!(
        why.contains("leaked")
            && why.contains(&ghost.to_string())
            && why.contains("does not exist"),
        "{why}"
    );
    let release = plan
        .iter()
        .find(|a| a["target"] == format!("ip/{ip}"))
        .unwrap_or_else(|| panic!("ip/{ip} not planned: {report}"));
    assert_eq!(release["verb"], "release");
    assert!(
        report["problems"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );

    let table = reconcile(&env, &net, &[]);
    assert_eq!(table.status.code(), Some(2));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&format!("network/{name}")) && text.contains(&format!("ip/{ip}")),
        "{text}"
    );

    // With --host-network there is no sandbox networking, so nothing to sweep.
    let host = reconcile(&env, &net, &["--host-network", "-o", "json"]);
    assert_eq!(
        host.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );
    assert!(json_of(&host)["plan"].as_array().is_some_and(Vec::is_empty));

    assert_eq!(files_under(&env.data_dir), files_before, "files changed");
    assert_eq!(links_state(&links), links_before, "links changed");
    assert!(netns.exists(), "netns still pinned");
    assert_eq!(containers().await, containers_before);
    drop(guard);
    env.shutdown().await;
}
