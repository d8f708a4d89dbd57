//! converge-testkit: helpers for tests only — a private containerd per test, a busybox OCI image, unique names, free ports, a bare HTTP GET, child-process guards, metrics samples, test PKI and private files.

mod cleanup;
mod containerd;
mod files;
mod http;
mod image;
mod metrics;
mod name;
mod net;
mod pki;
mod process;
mod subnet;

pub mod etcd;

pub use containerd::{PrivateContainerd, TestkitError};
pub use files::write_private_file;
pub use http::http_get;
pub use image::{BlobRecord, ImageLayout, ImageLayoutError, LayerRecord, busybox_image_layout};
pub use metrics::metric_sum;
pub use name::unique_name;
pub use net::{free_loopback_addr, free_loopback_port};
pub use pki::{TestPki, loopback_names};
pub use process::{KillOnDrop, TerminateError, terminate_and_wait};
pub use subnet::{RANDOM_SUBNET_OCTETS, SubnetLease, lease_subnet};
