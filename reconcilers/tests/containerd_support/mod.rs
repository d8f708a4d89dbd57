//! Shared set-up for the containerd adapter tests: a private containerd with the busybox image imported.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use converge_reconcilers::containerd::{
    ContainerRequest, ContainerdClient, ResolvedImage, RuntimeSpecInput, TaskIo,
    build_runtime_spec, container_id, container_labels, import_oci_layout,
};
use converge_testkit::{ImageLayout, PrivateContainerd, busybox_image_layout, unique_name};
use converge_watch::entity::{EntityId, Kind};
use converge_watch::spec::ContainerSpec;

/// Name the busybox image is imported under.
pub const IMAGE: &str = "test.local/busybox:latest";

/// A private containerd, a client in a unique namespace, and the busybox layout.
pub struct Env {
    pub client: ContainerdClient,
    pub layout: ImageLayout,
    pub logs: PathBuf,
    // Dropped last: tears containerd down.
    pub ctrd: PrivateContainerd,
}

impl Env {
    /// Starts containerd and builds (but does not import) the busybox layout.
    pub async fn start() -> Env {
        let ctrd = PrivateContainerd::start()
            .await
            .expect("start private containerd");
        let client = ContainerdClient::new(ctrd.socket(), &unique_name("ns"))
            .expect("client")
            .with_runc_root(ctrd.runc_root());
        client
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("containerd ready");
        let layout = busybox_image_layout(ctrd.dir().join("layout")).expect("busybox layout");
        let logs = ctrd.dir().join("logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        Env {
            client,
            layout,
            logs,
            ctrd,
        }
    }

    /// Starts containerd and imports busybox.
    pub async fn with_busybox() -> (Env, ResolvedImage) {
        let env = Env::start().await;
        import_oci_layout(&env.client, &env.layout.dir, IMAGE)
            .await
            .expect("import busybox");
        let image = env.client.resolve_image(IMAGE).await.expect("resolve");
        (env, image)
    }

    /// Creates (not starts) a container of sandbox `sandbox` running `command`.
    pub async fn create(&self, image: &ResolvedImage, sandbox: &str, command: &[&str]) -> String {
        let container = ContainerSpec {
            name: "app".into(),
            image: IMAGE.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.create_with(image, sandbox, &container).await
    }

    /// Creates (not starts) container `container` of sandbox `sandbox`.
    pub async fn create_with(
        &self,
        image: &ResolvedImage,
        sandbox: &str,
        container: &ContainerSpec,
    ) -> String {
        let owner = EntityId::new(Kind::Sandbox, sandbox).expect("sandbox id");
        let id = container_id(&owner, &container.name);
        let spec = build_runtime_spec(&RuntimeSpecInput {
            container_id: &id,
            namespace: self.client.namespace(),
            hostname: sandbox,
            image: &image.config,
            container,
            netns: None,
            extra_mounts: Vec::new(),
        })
        .expect("spec");
        self.client
            .create_container(&ContainerRequest {
                id: &id,
                image: IMAGE,
                parent_snapshot: image.top_chain_id(),
                spec: &spec,
                labels: container_labels(&owner, &container.name, 1),
            })
            .await
            .expect("create container");
        id
    }

    /// Where a container's output goes.
    pub fn io(&self, id: &str) -> TaskIo {
        TaskIo::log_file(&self.logs, id)
    }
}

/// A sandbox name unique to this test run.
pub fn sandbox_name() -> String {
    unique_name("sb")
}
