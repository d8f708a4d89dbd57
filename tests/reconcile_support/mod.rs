//! Shared set-up of the `converge reconcile` process tests: the command against `sandbox_support`'s server and containerd, and orphan containers no sandbox owns.
#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Command, Output};

use converge_reconcilers::containerd::{
    ContainerRequest, RuntimeSpecInput, build_runtime_spec, container_id, container_labels,
};
use converge_watch::spec::ContainerSpec;
use converge_watch::{EntityId, Kind};

use super::sandbox_support::{Env, IMAGE, NO_REGISTRY, NODE};

/// `converge reconcile` aimed at `env`'s server, containerd namespace, node and data dir,
/// with no registry and `CONVERGE_SERVER` unset; the caller adds `--kind`, `--dry-run`
/// and any network flags.
pub fn reconcile_command(env: &Env) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_converge"));
    command
        .arg("--server")
        .arg(env.server.to_string())
        .arg("reconcile")
        .arg("--containerd-socket")
        .arg(env.ctrd.socket())
        .args(["--namespace", env.containerd.namespace(), "--node-id", NODE])
        .arg("--data-dir")
        .arg(&env.data_dir)
        .arg("--registry-url")
        .arg(NO_REGISTRY)
        .env_remove("CONVERGE_SERVER");
    command
}

/// Runs [`reconcile_command`] with `extra` arguments and returns what it printed; panics
/// if the binary cannot be started.
pub fn reconcile(env: &Env, extra: &[&str]) -> Output {
    reconcile_command(env)
        .args(extra)
        .output()
        .expect("run converge reconcile")
}

/// Creates (not starts) a busybox container labelled as owned by sandbox `sandbox`, which
/// the test never applies; returns its id. Panics if containerd refuses.
pub async fn create_orphan(env: &Env, sandbox: &str) -> String {
    let image = env.containerd.resolve_image(IMAGE).await.expect("resolve");
    let owner = EntityId::new(Kind::Sandbox, sandbox).expect("sandbox id");
    let container = ContainerSpec {
        name: "app".into(),
        image: IMAGE.into(),
        command: vec!["sleep".into(), "300".into()],
        ..Default::default()
    };
    let id = container_id(&owner, &container.name);
    let spec = build_runtime_spec(&RuntimeSpecInput {
        container_id: &id,
        namespace: env.containerd.namespace(),
        hostname: sandbox,
        image: &image.config,
        container: &container,
        netns: None,
        extra_mounts: Vec::new(),
    })
    .expect("spec");
    let labels: HashMap<String, String> = container_labels(&owner, &container.name, 1);
    env.containerd
        .create_container(&ContainerRequest {
            id: &id,
            image: IMAGE,
            parent_snapshot: image.top_chain_id(),
            spec: &spec,
            labels,
        })
        .await
        .expect("create container");
    id
}
