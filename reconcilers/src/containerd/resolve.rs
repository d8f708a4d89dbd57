//! Reading an image back from containerd: record, platform manifest, config and layer chain ids.

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use super::client::ContainerdClient;
use super::content::{Descriptor, sha256_digest};
use super::error::ContainerdError;
use super::images::ImageRecord;

/// An image resolved from containerd: the record, its config, and its unpacked chain.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The image record.
    pub record: ImageRecord,
    /// The platform manifest chosen.
    pub manifest: Descriptor,
    /// The image configuration (env, cmd, entrypoint, user, working dir, diff ids).
    pub config: ImageConfiguration,
    /// Chain ids of the layers, base first; the last is the parent of a container's rootfs.
    pub chain_ids: Vec<String>,
}

impl ResolvedImage {
    /// The chain id of the top layer (empty for an image without layers).
    pub fn top_chain_id(&self) -> &str {
        self.chain_ids.last().map(String::as_str).unwrap_or("")
    }
}

/// Chain ids of `diff_ids` (OCI image spec): `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => sha256_digest(format!("{prev} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

pub(crate) fn descriptor_of(d: &oci_spec::image::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: d.size(),
    }
}

/// Picks the linux manifest for this machine's architecture from an index (or the only one).
pub(crate) fn pick_manifest(op: &str, index: &ImageIndex) -> Result<Descriptor, ContainerdError> {
    let manifests = index.manifests();
    if manifests.len() == 1 {
        return Ok(descriptor_of(&manifests[0]));
    }
    manifests
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
            })
        })
        .map(descriptor_of)
        .ok_or_else(|| {
            ContainerdError::bad_data(
                op,
                format!("no linux/{} manifest in the index", host_arch()),
            )
        })
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    op: &str,
    what: &str,
    data: &[u8],
) -> Result<T, ContainerdError> {
    serde_json::from_slice(data)
        .map_err(|e| ContainerdError::bad_data(op, format!("bad {what}: {e}")))
}

impl ContainerdClient {
    /// Resolves image `name` from containerd's own store: record, platform manifest, config
    /// and chain ids. Fails with `NotFound` when the record or one of its blobs is missing.
    pub async fn resolve_image(&self, name: &str) -> Result<ResolvedImage, ContainerdError> {
        let op = format!("resolve image {name}");
        let record = self
            .get_image(name)
            .await?
            .ok_or_else(|| ContainerdError::NotFound {
                operation: op.clone(),
                message: format!("no image {name:?} in namespace {}", self.namespace()),
            })?;
        let mut manifest_desc = record.target.clone();
        let mut bytes = self.read_content(&manifest_desc.digest).await?;
        if is_index(&manifest_desc.media_type) {
            let index: ImageIndex = parse(&op, "index", &bytes)?;
            manifest_desc = pick_manifest(&op, &index)?;
            bytes = self.read_content(&manifest_desc.digest).await?;
        }
        let manifest: ImageManifest = parse(&op, "manifest", &bytes)?;
        let config_bytes = self
            .read_content(manifest.config().digest().as_ref())
            .await?;
        let config: ImageConfiguration = parse(&op, "image config", &config_bytes)?;
        let chain_ids = chain_ids(config.rootfs().diff_ids());
        Ok(ResolvedImage {
            record,
            manifest: manifest_desc,
            config,
            chain_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = sha256_digest(b"a");
        let b = sha256_digest(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }
}
