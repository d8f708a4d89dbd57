//! Shared set-up for the GC tests: entity sources (a server stand-in, a failing one), a scripted disk, containerd state snapshots for dry-run checks, and unlabelled containers.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use converge_reconcilers::containerd::{
    ContainerRequest, ContainerdClient, ResolvedImage, RuntimeSpecInput, build_runtime_spec,
};
use converge_reconcilers::engine::BoxError;
use converge_reconcilers::gc_report::EntitySource;
use converge_reconcilers::images::{DiskError, DiskStats, DiskUsage};
use converge_watch::spec::ContainerSpec;
use converge_watch::{Entity, EntityId, Kind};
use serde_json::{Value, json};

/// Entities as the server has them, in memory.
#[derive(Default)]
pub struct ServerEntities(pub Mutex<Vec<Entity>>);

impl ServerEntities {
    /// Adds or replaces `id` with `spec` and `status`.
    pub fn put(&self, id: EntityId, spec: Value, status: Value) {
        let mut e = Entity::new(id.clone(), spec);
        e.status = status;
        let mut all = self.0.lock().expect("lock");
        all.retain(|x| x.id != id);
        all.push(e);
    }

    /// Adds sandbox `name` meant for `node` with status phase `phase`.
    pub fn sandbox(&self, name: &str, node: &str, phase: &str) {
        let id = EntityId::new(Kind::Sandbox, name).expect("sandbox id");
        self.put(
            id,
            json!({"node": node, "containers": [{"name": "app", "image": "x"}]}),
            json!({"phase": phase}),
        );
    }

    /// Adds artifact `name` for `image`.
    pub fn artifact(&self, name: &str, image: &str, archived: bool) {
        let id = EntityId::new(Kind::Artifact, name).expect("artifact id");
        let state = if archived { "archived" } else { "active" };
        self.put(
            id,
            json!({"image": image, "manifest": format!("sha256:{}", "0".repeat(64)), "state": state}),
            json!({}),
        );
    }
}

#[async_trait]
impl EntitySource for ServerEntities {
    async fn get(&self, id: &EntityId) -> Result<Option<Entity>, BoxError> {
        Ok(self
            .0
            .lock()
            .expect("lock")
            .iter()
            .find(|e| &e.id == id)
            .cloned())
    }
    async fn list(&self, kind: Kind) -> Result<Vec<Entity>, BoxError> {
        Ok(self
            .0
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect())
    }
}

/// An entity server that cannot be reached.
pub struct UnreachableServer;

#[async_trait]
impl EntitySource for UnreachableServer {
    async fn get(&self, _id: &EntityId) -> Result<Option<Entity>, BoxError> {
        Err("server unreachable".into())
    }
    async fn list(&self, _kind: Kind) -> Result<Vec<Entity>, BoxError> {
        Err("server unreachable".into())
    }
}

/// A disk whose readings are scripted: each call takes the next used-percent reading, the
/// last one repeating.
pub struct ScriptedDisk(pub Mutex<VecDeque<u64>>);

impl ScriptedDisk {
    /// Readings in percent of a 1 GB disk.
    pub fn new(percents: &[u64]) -> Self {
        Self(Mutex::new(percents.iter().copied().collect()))
    }
    /// Replaces the script.
    pub fn set(&self, percents: &[u64]) {
        *self.0.lock().expect("lock") = percents.iter().copied().collect();
    }
}

impl DiskUsage for ScriptedDisk {
    fn usage(&self) -> Result<DiskStats, DiskError> {
        let mut q = self.0.lock().expect("lock");
        let p = if q.len() > 1 {
            q.pop_front().unwrap_or(0)
        } else {
            q.front().copied().unwrap_or(0)
        };
        Ok(DiskStats {
            used_bytes: p * 10_000_000,
            capacity_bytes: 1_000_000_000,
        })
    }
}

/// containerd state a dry-run must leave identical.
#[derive(Debug, PartialEq, Eq)]
pub struct ContainerdState {
    pub containers: BTreeMap<String, (String, BTreeMap<String, String>)>,
    pub images: BTreeMap<String, String>,
    pub snapshots: BTreeMap<String, String>,
    pub tasks: BTreeMap<String, String>,
}

/// Reads containers, images, snapshots and tasks of `client`'s namespace.
pub async fn containerd_state(client: &ContainerdClient) -> ContainerdState {
    let containers = client
        .list_containers(&[])
        .await
        .expect("containers")
        .into_iter()
        .map(|c| (c.id, (c.image, c.labels.into_iter().collect())))
        .collect();
    let images = client
        .list_images(&[])
        .await
        .expect("images")
        .into_iter()
        .map(|i| (i.name, i.target.digest))
        .collect();
    let snapshots = client
        .list_snapshots()
        .await
        .expect("snapshots")
        .into_iter()
        .map(|s| (s.name, format!("{:?}", s.kind)))
        .collect();
    let tasks = client
        .list_tasks()
        .await
        .expect("tasks")
        .into_iter()
        .map(|t| (t.container_id, format!("{:?}", t.state)))
        .collect();
    ContainerdState {
        containers,
        images,
        snapshots,
        tasks,
    }
}

/// Creates container `id` of image `image_name` with exactly `labels` (none of converge's
/// unless given).
pub async fn create_with_labels(
    client: &ContainerdClient,
    image: &ResolvedImage,
    image_name: &str,
    id: &str,
    labels: HashMap<String, String>,
) {
    let container = ContainerSpec {
        name: "app".into(),
        image: image_name.into(),
        command: vec!["sleep".into(), "300".into()],
        ..Default::default()
    };
    let spec = build_runtime_spec(&RuntimeSpecInput {
        container_id: id,
        namespace: client.namespace(),
        hostname: "gc-test",
        image: &image.config,
        container: &container,
        netns: None,
        extra_mounts: Vec::new(),
    })
    .expect("spec");
    client
        .create_container(&ContainerRequest {
            id,
            image: image_name,
            parent_snapshot: image.top_chain_id(),
            spec: &spec,
            labels,
        })
        .await
        .expect("create container");
}
