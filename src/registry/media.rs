//! Media types of the manifests, configs and layers the registry and the importer handle,
//! and the walk over the descriptors a manifest or index references.

use serde_json::Value;

use super::names::{Digest, NameError};

/// Why a manifest's descriptors could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// `layers` or `manifests` is not an array.
    #[error("{0} is not an array")]
    NotArray(&'static str),
    /// A descriptor lacks its digest.
    #[error("a descriptor has no digest")]
    NoDigest,
    /// A descriptor's digest is not a valid sha256 digest.
    #[error(transparent)]
    BadDigest(#[from] NameError),
}

/// Digests a manifest or index references and a registry must hold: `config` and `layers[]`
/// (foreign layers, which carry `urls`, excepted) as blobs, and `manifests[]` as child
/// manifests. Returned as `(blobs, child_manifests)`.
pub fn referenced_digests(doc: &Value) -> Result<(Vec<Digest>, Vec<Digest>), DescriptorError> {
    let array = |key: &'static str| -> Result<Vec<Value>, DescriptorError> {
        match doc.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(_) => Err(DescriptorError::NotArray(key)),
        }
    };
    let digest_of = |d: &Value| -> Result<Digest, DescriptorError> {
        let s = d
            .get("digest")
            .and_then(Value::as_str)
            .ok_or(DescriptorError::NoDigest)?;
        Ok(s.parse()?)
    };
    let mut blobs = Vec::new();
    let layers = array("layers")?;
    for d in doc.get("config").into_iter().chain(layers.iter()) {
        let foreign = d
            .get("urls")
            .and_then(Value::as_array)
            .is_some_and(|u| !u.is_empty());
        let digest = digest_of(d)?;
        if !foreign {
            blobs.push(digest);
        }
    }
    let children = array("manifests")?
        .iter()
        .map(digest_of)
        .collect::<Result<_, _>>()?;
    Ok((blobs, children))
}

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip-compressed layer.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// True for the media types of an index / manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// True for the media types of a single-image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}
