//! Why converging one sandbox failed; each variant carries the sandbox and the cause.

use super::volumes::VolumeError;
use crate::artifacts::PullError;
use crate::containerd::{ContainerdError, SpecError};
use crate::engine::StatusError;
use crate::network::{NodeNetworkError, PortsError, PublishedError};

/// A failure while converging a sandbox. The `Display` text is what lands in the sandbox's
/// `status.message`, so it names the container and the cause in words.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The image is neither in containerd nor under a registry the puller knows.
    #[error("container {container}: image {image} is not in containerd and no registry serves it")]
    UnknownImage {
        /// Container name.
        container: String,
        /// The image reference.
        image: String,
    },
    /// Pulling the image failed.
    #[error("container {container}: cannot pull image {image}: {source}")]
    Pull {
        /// Container name.
        container: String,
        /// The image reference.
        image: String,
        /// Why.
        #[source]
        source: PullError,
    },
    /// The runtime spec could not be built (no command, bad user, limits out of range).
    #[error("container {container}: {source}")]
    Spec {
        /// Container name.
        container: String,
        /// Why.
        #[source]
        source: SpecError,
    },
    /// A containerd call failed (this includes runc refusing to start a bad command).
    #[error("container {container}: {source}")]
    Containerd {
        /// Container name (or `*` for sandbox-wide calls).
        container: String,
        /// Why.
        #[source]
        source: ContainerdError,
    },
    /// The log directory could not be created or removed.
    #[error("log directory {path}: {source}")]
    Logs {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox's network could not be set up or torn down (the text includes every
    /// cause, e.g. the netlink error or a full subnet).
    #[error("sandbox network: {}", causes(.0))]
    Network(#[source] NodeNetworkError),
    /// Declared ports did not listen in time (or the task's sockets could not be read):
    /// names the ports that never opened and what did listen.
    #[error("{0}")]
    Ports(#[source] PortsError),
    /// Published host ports could not be set up or removed (e.g. `host port 8080 is
    /// already published by sandbox/x`).
    #[error("{0}")]
    Published(#[from] PublishedError),
    /// A named volume could not be resolved, created, mounted or removed.
    #[error("volume: {0}")]
    Volume(#[from] VolumeError),
    /// Containers were still listed after being removed, so the network stays up.
    #[error("{count} container(s) still present after removal; network kept")]
    NotGone {
        /// How many were still listed.
        count: usize,
    },
    /// Writing the status failed.
    #[error("cannot write the sandbox status: {0}")]
    Status(#[from] StatusError),
}

impl SandboxError {
    /// A containerd failure concerning `container`.
    pub fn containerd(container: &str, source: ContainerdError) -> Self {
        SandboxError::Containerd {
            container: container.to_string(),
            source,
        }
    }

    /// A network failure.
    pub fn network(source: NodeNetworkError) -> Self {
        SandboxError::Network(source)
    }

    /// True when the failure is about the infrastructure (containerd or the entity server
    /// unreachable) rather than the sandbox itself: worth a plain engine retry, and no
    /// `failed` phase.
    pub fn is_infrastructure(&self) -> bool {
        match self {
            SandboxError::Containerd { source, .. } => source.is_unavailable(),
            SandboxError::Status(_) | SandboxError::NotGone { .. } => true,
            _ => false,
        }
    }
}

/// `error: cause: cause...` of an error and its sources.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
