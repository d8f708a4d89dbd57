//! The artifacts adapter: pulling images of the artifact registry into containerd.

mod manifest;
pub mod pull;
pub mod reference;
pub mod source;

pub use pull::{CLUSTER_REGISTRY_HOST, ImagePuller, PullError, PullOutcome};
pub use reference::{ImageReference, Pin, ReferenceError};
pub use source::RegistryBlobSource;
