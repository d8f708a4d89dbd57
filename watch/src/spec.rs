//! Typed views of the `spec` and `status` documents of each kind (DESIGN.md section 3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Desired run state of a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Containers should run.
    #[default]
    Running,
    /// Containers should be stopped but kept.
    Stopped,
}

/// What a container's exit leads to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart after any exit.
    #[default]
    Always,
    /// Restart after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

/// `spec` of a `sandbox`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// Node that should run it; empty means "any single node".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Free-form labels, matched by service selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Desired state.
    #[serde(default)]
    pub state: DesiredState,
    /// Restart policy for every container.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The containers; at least one.
    pub containers: Vec<ContainerSpec>,
    /// Named volumes the containers may mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// How long to wait for declared ports to listen (default 15 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_timeout_seconds: Option<u32>,
    /// Grace between SIGTERM and SIGKILL when stopping (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_seconds: Option<u32>,
}

/// One container of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Unique within the sandbox.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command and arguments; empty means the image's entrypoint and cmd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Ports the container listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Volume mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// A port a container listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// TCP port inside the sandbox, 1-65535.
    pub port: u32,
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Optional host port forwarded to this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u32>,
}

/// A volume mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// Name of a volume declared in the sandbox's `volumes`.
    pub volume: String,
    /// Absolute path inside the container.
    pub path: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Resource limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU limit in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
}

/// A named volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// DNS-label name, unique within the sandbox.
    pub name: String,
}

/// Observed phase of a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Being created.
    #[default]
    Pending,
    /// All containers run (and declared ports listen).
    Running,
    /// Stopped because the spec says `state: stopped`.
    Stopped,
    /// A container exited and its restart policy does not restart it: its containers are
    /// gone (or going) and will not come back until the spec changes.
    Dead,
    /// Could not be made to run; `message` says why.
    Failed,
}

/// `status` of a `sandbox`. Unknown fields are kept so that newer controllers can add some.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// Observed phase.
    #[serde(default)]
    pub phase: Phase,
    /// Address in the node subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Human-readable reason for the phase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Spec revision the status describes.
    #[serde(default)]
    pub observed_revision: i64,
    /// Per-container state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerStatus>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Observed state of one container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Container name from the spec.
    pub name: String,
    /// `created`, `running`, `exited`, `unknown`, ...
    #[serde(default)]
    pub state: String,
    /// Last exit code, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Times restarted by the restart policy.
    #[serde(default)]
    pub restart_count: u32,
    /// Why the container last ended, when converge knows more than the exit code:
    /// `OOMKilled` when the kernel killed a process of it for exceeding its memory limit.
    /// Kept across restarts like `exit_code`; absent in statuses of older controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Lifecycle state of an artifact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactState {
    /// In use: its image and blobs are kept.
    #[default]
    Active,
    /// Retired: its image and blobs become collectable.
    Archived,
}

/// `spec` of an `artifact`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSpec {
    /// Image reference, e.g. `cluster.local:5000/demo:v1`.
    pub image: String,
    /// Digest of the image manifest, `sha256:<64 hex>`.
    pub manifest: String,
    /// Lifecycle state.
    #[serde(default)]
    pub state: ArtifactState,
}

/// `spec` of a `service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Labels a sandbox must all carry to be an endpoint.
    pub selector: BTreeMap<String, String>,
    /// Port the service is known by.
    pub port: u32,
    /// Port on each sandbox; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}
