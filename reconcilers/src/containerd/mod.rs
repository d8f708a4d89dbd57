//! The containerd adapter: client, content/lease/image/snapshot building blocks, image import, events, OCI runtime specs and container lifecycle.

pub mod cgroups;
mod client;
mod content;
mod error;
mod events;
mod ids;
mod images;
mod import;
mod leases;
mod lifecycle;
mod resolve;
mod snapshots;
mod spec;
mod tasks;

pub use client::{ContainerdClient, DEFAULT_NAMESPACE, SNAPSHOTTER};
pub use content::{ContentInfo, Descriptor, MAX_READ_BYTES, is_valid_sha256_digest, sha256_digest};
pub use error::ContainerdError;
pub use events::{ContainerdEvent, decode_event};
pub use ids::{
    LABEL_CONTAINER_NAME, LABEL_ENTITY_ID, LABEL_SANDBOX_REVISION, MAX_IDENTIFIER_LEN,
    container_id, is_valid_identifier,
};
pub use images::ImageRecord;
pub use import::{
    BlobReader, BlobSource, BlobSourceError, LayoutBlobSource, import_image, import_oci_layout,
};
pub use leases::LeaseResourceKind;
pub use lifecycle::{ContainerRecord, ContainerRequest, RUNTIME, SPEC_TYPE_URL, container_labels};
pub use resolve::{ResolvedImage, chain_ids};
pub use snapshots::{Mount, SnapshotInfo, SnapshotKind};
pub use spec::{
    CPU_PERIOD_US, DEFAULT_CAPABILITIES, DEFAULT_PATH, RuntimeSpecInput, SpecError,
    build_runtime_spec, cgroup_path, default_mounts, process_args, process_env,
};
pub use tasks::{TaskIo, TaskState, TaskStatus};
