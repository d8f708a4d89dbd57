//! Shared set-up of the sandbox tests: a private containerd with busybox imported under a
//! unique namespace, an in-process entity server on a temp socket, and the controller.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use converge::daemon::controller::run_controller;
use converge::daemon::flags::{ControllerFlags, DaemonConfig};
use converge::registry::{ArtifactStore, serve_registry_on};
use converge::server::{StoreUrl, open_store, serve};
use converge_reconcilers::containerd::{ContainerdClient, LABEL_ENTITY_ID, import_oci_layout};
use converge_testkit::{PrivateContainerd, busybox_image_layout, unique_name};
use converge_watch::{Entity, EntityClient, EntityId, ServerAddress};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Name busybox is imported under in the private containerd.
pub const IMAGE: &str = "test.local/busybox:latest";
/// Node id of the test controller.
pub const NODE: &str = "test-node";
/// A registry URL nothing listens on.
pub const NO_REGISTRY: &str = "http://127.0.0.1:9";

/// Everything one sandbox test needs; dropping it stops the server and containerd.
pub struct Env {
    pub containerd: ContainerdClient,
    pub client: EntityClient,
    pub server: ServerAddress,
    pub data_dir: PathBuf,
    /// Where the controller pulls `cluster.local:5000/...` from (default: nowhere).
    pub registry_url: String,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
    /// The test's own bridge and subnet, once [`Env::network_config`] asked for them.
    pub net: Option<TestNetwork>,
    // Dropped last: tears containerd down.
    pub ctrd: PrivateContainerd,
}

impl Env {
    /// containerd (busybox imported) and the entity server, no controller yet.
    pub async fn start() -> Env {
        let (ctrd, containerd) = private_containerd("sb").await;
        let layout = busybox_image_layout(ctrd.dir().join("layout")).expect("busybox layout");
        import_oci_layout(&containerd, &layout.dir, IMAGE)
            .await
            .expect("import busybox");
        let dir = tempfile::Builder::new()
            .prefix("converge-sb-")
            .tempdir()
            .expect("temp dir");
        let server: ServerAddress = format!("unix:{}", dir.path().join("entity.sock").display())
            .parse()
            .expect("address");
        let store = open_store(&StoreUrl::Redb(dir.path().join("entities.redb")), 1000)
            .await
            .expect("store");
        let stop = CancellationToken::new();
        let served = {
            let server = server.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(store, &server, stop.cancelled_owned()).await {
                    eprintln!("entity server failed: {e}");
                }
            })
        };
        let client = connect(&server).await;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        Env {
            containerd,
            client,
            server,
            data_dir,
            registry_url: NO_REGISTRY.to_string(),
            stop,
            tasks: vec![served],
            _dir: dir,
            net: None,
            ctrd,
        }
    }

    /// The controller settings of these tests: fast restarts, short grace, single node,
    /// sandboxes on the host network. Built through the real flag parser, so settings
    /// added later keep their defaults.
    pub fn config(&self, dry_run: bool) -> DaemonConfig {
        self.config_with(dry_run, &["--host-network".to_string()])
    }

    /// [`Env::config`] with sandbox networking on this test's own bridge (`cvt<random>`)
    /// and subnet (`10.199.<n>.0/24`), namespaces pinned under containerd's shared dir.
    pub fn network_config(&mut self, dry_run: bool) -> DaemonConfig {
        let run_dir = self.ctrd.shared_dir().join("run");
        let net = self.net.get_or_insert_with(TestNetwork::fresh);
        let args = [
            "--bridge".to_string(),
            net.bridge.clone(),
            "--subnet".to_string(),
            net.subnet.clone(),
            "--run-dir".to_string(),
            run_dir.display().to_string(),
        ];
        self.config_with(dry_run, &args)
    }

    fn config_with(&self, dry_run: bool, extra: &[String]) -> DaemonConfig {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            flags: ControllerFlags,
        }
        let mut args: Vec<String> = vec!["test".into()];
        args.extend(["--data-dir".into(), self.data_dir.display().to_string()]);
        args.extend([
            "--containerd-socket".into(),
            self.ctrd.socket().display().to_string(),
        ]);
        args.extend([
            "--namespace".into(),
            self.containerd.namespace().to_string(),
        ]);
        args.extend(["--node-id".into(), NODE.to_string(), "--single-node".into()]);
        args.extend([
            "--runc-root".into(),
            self.ctrd.runc_root().display().to_string(),
        ]);
        args.extend(
            [
                "--resync",
                "5s",
                "--workers",
                "2",
                "--qps",
                "50",
                "--burst",
                "100",
            ]
            .map(String::from),
        );
        args.extend(["--stop-grace", "500ms", "--restart-backoff", "300ms"].map(String::from));
        if dry_run {
            args.push("--dry-run".into());
        }
        args.extend(extra.iter().cloned());
        let flags = <Flags as clap::Parser>::try_parse_from(args).expect("test flags parse");
        flags.flags.validate().expect("test flags are valid")
    }

    /// Starts the controller in this process with [`Env::config`].
    pub fn start_controller(&mut self, dry_run: bool) {
        let config = self.config(dry_run);
        self.start_controller_with(config);
    }

    /// Starts the controller in this process with `config`.
    pub fn start_controller_with(&mut self, config: DaemonConfig) {
        let server = self.server.clone();
        let stop = self.stop.clone();
        let registry_url = self.registry_url.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = run_controller(config, server, &registry_url, stop).await {
                eprintln!("controller failed: {e}");
            }
        }));
    }

    /// Creates or replaces sandbox `name` with `spec`.
    pub async fn apply(&self, name: &str, spec: Value) -> Entity {
        let id = sandbox_id(name);
        self.client
            .put(&id, &spec, None)
            .await
            .expect("put sandbox")
    }

    /// The sandbox's current status.
    pub async fn status(&self, name: &str) -> Value {
        self.client
            .get(&sandbox_id(name))
            .await
            .expect("get")
            .map(|e| e.status)
            .unwrap_or(Value::Null)
    }

    /// Polls the sandbox's status until `pred` holds (30 s at most); returns it.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        for _ in 0..600 {
            last = self.status(name).await;
            if pred(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sandbox {name}: {what} never happened; last status {last}");
    }

    /// Containers labelled as owned by sandbox `name`.
    pub async fn containers_of(&self, name: &str) -> Vec<String> {
        let id = sandbox_id(name).to_string();
        self.containerd
            .list_containers(&[(LABEL_ENTITY_ID, &id)])
            .await
            .expect("list containers")
            .into_iter()
            .map(|c| c.id)
            .collect()
    }

    /// Polls until `check` returns true (30 s at most).
    pub async fn eventually<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        for _ in 0..600 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} never happened");
    }

    /// Serves an artifact registry on a loopback port until shutdown; returns its URL.
    pub async fn start_registry(&mut self) -> String {
        let store = ArtifactStore::open(self.data_dir.join("artifacts"))
            .await
            .expect("artifact store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind registry");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = self.stop.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = serve_registry_on(store, listener, stop.cancelled_owned()).await {
                eprintln!("registry failed: {e}");
            }
        }));
        url
    }

    /// Runs `converge describe sandbox/<name>` against this server, data dir and containerd
    /// namespace; panics only if the binary cannot be started.
    pub fn describe(&self, name: &str) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_converge"))
            .arg("--server")
            .arg(self.server.to_string())
            .args(["describe", &format!("sandbox/{name}"), "--data-dir"])
            .arg(&self.data_dir)
            .args(["--namespace", self.containerd.namespace()])
            .env_remove("CONVERGE_SERVER")
            .output()
            .expect("run converge describe")
    }

    /// Stops the controller and the server and waits for them.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }
}

/// A private containerd and a client (with its runc root) in a fresh namespace named after
/// `prefix`, ready to answer (10 s at most).
pub async fn private_containerd(prefix: &str) -> (PrivateContainerd, ContainerdClient) {
    let ctrd = PrivateContainerd::start()
        .await
        .expect("private containerd");
    let containerd = ContainerdClient::new(ctrd.socket(), &unique_name(prefix))
        .expect("containerd client")
        .with_runc_root(ctrd.runc_root());
    containerd
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("containerd ready");
    (ctrd, containerd)
}

/// Connects to the in-process server, waiting for it to listen.
pub async fn connect(server: &ServerAddress) -> EntityClient {
    for _ in 0..200 {
        if let Ok(client) = EntityClient::connect(server).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("entity server at {server} never answered");
}

/// `sandbox/<name>`.
pub fn sandbox_id(name: &str) -> EntityId {
    format!("sandbox/{name}").parse().expect("sandbox id")
}

/// A bridge name and subnet no other test uses; dropping it deletes the bridge (and frees
/// the subnet's lease).
pub struct TestNetwork {
    /// `cvt` + 8 hex digits.
    pub bridge: String,
    /// `10.199.<n>.0/24`.
    pub subnet: String,
    /// `10.199.<n>.`: addresses of the subnet start with this.
    pub prefix: String,
    /// Keeps `n` reserved against every other test process.
    pub lease: converge_testkit::SubnetLease,
}

impl TestNetwork {
    /// A fresh bridge name and a leased subnet (nothing is created).
    pub fn fresh() -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(converge_testkit::unique_name("net"));
        let lease = converge_testkit::lease_subnet();
        let n = lease.octet();
        TestNetwork {
            bridge: format!("cvt{:08x}", seed as u32),
            subnet: format!("10.199.{n}.0/24"),
            prefix: format!("10.199.{n}."),
            lease,
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
