//! The daemon verbs: `converge up` (server + registry + controller in one process),
//! `converge controller` (the controller alone) and `converge reconcile` (one dry-run pass).

pub mod controller;
pub mod dead_sandboxes;
pub mod flags;
pub mod gc;
pub mod reconcile;
pub mod services;
pub mod up;

use std::net::SocketAddr;

use converge_reconcilers::artifacts::PullError;
use converge_reconcilers::containerd::ContainerdError;

use crate::registry::{ArtifactStoreError, RegistryError};
use crate::server::ServerError;

impl DaemonError {
    /// A [`DaemonError::GcPass`] of `kind` caused by `source`.
    pub fn gc_pass(
        kind: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DaemonError::GcPass {
            kind,
            source: Box::new(source),
        }
    }
}

/// Why a daemon verb failed. Each variant says which part and why.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A flag was refused.
    #[error(transparent)]
    Flags(#[from] flags::FlagError),
    /// The `--listen` address could not be formed.
    #[error("invalid listen address: {0}")]
    Listen(String),
    /// The entity server failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The artifact store could not be opened.
    #[error("cannot open the artifact store")]
    ArtifactStore(#[source] ArtifactStoreError),
    /// The registry address could not be bound.
    #[error("cannot listen for the registry on {addr}")]
    RegistryBind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The registry server failed.
    #[error("the registry failed")]
    RegistryServe(#[source] RegistryError),
    /// The registry URL for pulls is unusable.
    #[error("bad registry URL")]
    Registry(#[source] PullError),
    /// containerd could not be used.
    #[error("containerd")]
    Containerd(#[source] ContainerdError),
    /// The HTTP endpoint failed.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// The entity server could not be reached or answered with an error.
    #[error("entity server at {address}")]
    Client {
        /// Its address.
        address: String,
        /// Why.
        #[source]
        source: converge_watch::ClientError,
    },
    /// `--kind blobs` was asked where there is no artifact store.
    #[error(
        "no artifact store at {}: pass --artifact-dir or the --data-dir of the node serving the registry",
        .0.display()
    )]
    NoArtifactStore(std::path::PathBuf),
    /// A GC pass could not run at all (containerd, artifacts or blobs unreadable).
    #[error("the {kind} pass could not run")]
    GcPass {
        /// `orphans`, `images` or `blobs`.
        kind: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `converge reconcile` was asked to change things.
    #[error(
        "converge reconcile only plans for now: add --dry-run (the running controller makes the changes)"
    )]
    NotDryRun,
    /// The plan could not be printed.
    #[error("cannot print the plan: {0}")]
    Output(String),
    /// A background task panicked or was cancelled.
    #[error("a daemon task ended abnormally: {0}")]
    Task(String),
}
