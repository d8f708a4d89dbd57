//! converge-testkit: helpers for tests only — a private containerd per test, a busybox OCI image, unique names.

mod cleanup;
mod containerd;
mod image;
mod name;
mod subnet;

pub mod etcd;

pub use containerd::{PrivateContainerd, TestkitError};
pub use image::{BlobRecord, ImageLayout, ImageLayoutError, LayerRecord, busybox_image_layout};
pub use name::unique_name;
pub use subnet::{RANDOM_SUBNET_OCTETS, SubnetLease, lease_subnet};
