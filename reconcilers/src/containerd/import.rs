//! Importing an image into containerd from any blob source: blobs, gc labels, record, unpacked snapshots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::client::{ContainerdClient, SNAPSHOTTER};
use super::content::{Descriptor, MAX_READ_BYTES, is_valid_sha256_digest, sha256_digest};
use super::error::ContainerdError;
use super::images::ImageRecord;
use super::resolve::{chain_ids, descriptor_of, is_index, parse, pick_manifest};
use super::snapshots::SnapshotKind;

/// A readable blob.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;
/// A blob source's failure.
pub type BlobSourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where an import gets blobs from: an OCI layout on disk, a registry over HTTP, ...
#[async_trait]
pub trait BlobSource: Send + Sync {
    /// Opens blob `desc` for reading from its start. The importer checks size and digest.
    async fn open(&self, desc: &Descriptor) -> Result<BlobReader, BlobSourceError>;
}

/// Blobs of an OCI image layout directory (`blobs/sha256/<hex>`).
#[derive(Debug, Clone)]
pub struct LayoutBlobSource {
    dir: PathBuf,
}

impl LayoutBlobSource {
    /// A source reading blobs from layout `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LayoutBlobSource { dir: dir.into() }
    }
}

#[async_trait]
impl BlobSource for LayoutBlobSource {
    async fn open(&self, desc: &Descriptor) -> Result<BlobReader, BlobSourceError> {
        // Only well-formed digests reach the file system, so the path stays inside `dir`.
        let hex = desc
            .digest
            .strip_prefix("sha256:")
            .filter(|_| is_valid_sha256_digest(&desc.digest))
            .ok_or_else(|| format!("{:?} is not a sha256 digest", desc.digest))?;
        let file = tokio::fs::File::open(self.dir.join("blobs").join("sha256").join(hex)).await?;
        Ok(Box::pin(file))
    }
}

/// Label carrying a layer's uncompressed digest.
const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// How long an import's lease lives if the importer dies mid-way.
const IMPORT_LEASE_EXPIRY: Duration = Duration::from_secs(3600);

async fn read_small(
    op: &str,
    source: &dyn BlobSource,
    desc: &Descriptor,
) -> Result<Vec<u8>, ContainerdError> {
    if desc.size > MAX_READ_BYTES {
        return Err(ContainerdError::bad_data(
            op,
            format!("{} is too large for a manifest or config", desc.digest),
        ));
    }
    let mut reader = source
        .open(desc)
        .await
        .map_err(|source| ContainerdError::Source {
            operation: format!("{op}: open {}", desc.digest),
            source,
        })?;
    let mut data = Vec::new();
    (&mut reader)
        .take(MAX_READ_BYTES + 1)
        .read_to_end(&mut data)
        .await
        .map_err(|e| ContainerdError::Source {
            operation: format!("{op}: read {}", desc.digest),
            source: Box::new(e),
        })?;
    if data.len() as u64 != desc.size || sha256_digest(&data) != desc.digest {
        return Err(ContainerdError::bad_data(
            op,
            format!("blob {} does not match its descriptor", desc.digest),
        ));
    }
    Ok(data)
}

/// Imports image `root` (a manifest or an index) from `source` into containerd as `name`:
/// writes every blob with the `containerd.io/gc.ref.*` labels that tie them together,
/// unpacks the layers into overlayfs snapshots named by chain id (skipping those already
/// committed), and creates or updates the image record, all under a lease deleted at the
/// end. Idempotent: importing the same image again changes nothing. On failure nothing
/// is referenced by a record and containerd's GC collects what was written.
pub async fn import_image(
    client: &ContainerdClient,
    source: &dyn BlobSource,
    root: &Descriptor,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<ImageRecord, ContainerdError> {
    let op = format!("import image {name}");
    if !is_valid_sha256_digest(&root.digest) {
        return Err(ContainerdError::invalid(
            op,
            format!("{:?} is not a sha256 digest", root.digest),
        ));
    }
    let lease = format!("converge-import-{}", &root.digest[7..19]);
    let lease = format!("{lease}-{}", uuid_like());
    client
        .create_lease(&lease, IMPORT_LEASE_EXPIRY, HashMap::new())
        .await?;
    let result = import_under_lease(client, source, root, name, labels, &lease).await;
    if let Err(err) = client.delete_lease(&lease).await {
        tracing::warn!(lease, error = %err, "could not delete import lease; it expires by itself");
    }
    result
}

fn uuid_like() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}

async fn import_under_lease(
    client: &ContainerdClient,
    source: &dyn BlobSource,
    root: &Descriptor,
    name: &str,
    labels: HashMap<String, String>,
    lease: &str,
) -> Result<ImageRecord, ContainerdError> {
    let op = format!("import image {name}");
    let lease = Some(lease);
    let root_bytes = read_small(&op, source, root).await?;
    let (index_bytes, manifest_desc, manifest_bytes) = if is_index(&root.media_type) {
        let index: ImageIndex = parse(&op, "index", &root_bytes)?;
        let desc = pick_manifest(&op, &index)?;
        let bytes = read_small(&op, source, &desc).await?;
        (Some(root_bytes), desc, bytes)
    } else {
        (None, root.clone(), root_bytes)
    };
    let manifest: ImageManifest = parse(&op, "manifest", &manifest_bytes)?;
    let config_desc = descriptor_of(manifest.config());
    let config_bytes = read_small(&op, source, &config_desc).await?;
    let config: ImageConfiguration = parse(&op, "image config", &config_bytes)?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ContainerdError::bad_data(
            op,
            format!(
                "manifest has {} layers but the config {} diff ids",
                manifest.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    let chain = chain_ids(&diff_ids);

    // Layers first (children before parents, so no gc reference ever dangles).
    let layers: Vec<Descriptor> = manifest.layers().iter().map(descriptor_of).collect();
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        let labels = HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_id.clone())]);
        if client.content_info(&layer.digest).await?.is_none() {
            let reader = source
                .open(layer)
                .await
                .map_err(|source| ContainerdError::Source {
                    operation: format!("{op}: open layer {}", layer.digest),
                    source,
                })?;
            client.write_content(layer, reader, &labels, lease).await?;
        } else {
            client.set_content_labels(&layer.digest, &labels).await?;
        }
    }
    unpack(client, &op, &layers, &diff_ids, &chain, lease).await?;

    let mut config_labels = HashMap::new();
    if let Some(top) = chain.last() {
        config_labels.insert(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            top.clone(),
        );
    }
    client
        .write_content(&config_desc, config_bytes.as_slice(), &config_labels, lease)
        .await?;
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        config_desc.digest.clone(),
    )]);
    for (i, layer) in layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    client
        .write_content(
            &manifest_desc,
            manifest_bytes.as_slice(),
            &manifest_labels,
            lease,
        )
        .await?;
    if let Some(index_bytes) = index_bytes {
        let index_labels = HashMap::from([(
            "containerd.io/gc.ref.content.m.0".to_string(),
            manifest_desc.digest.clone(),
        )]);
        client
            .write_content(root, index_bytes.as_slice(), &index_labels, lease)
            .await?;
    }
    let record = ImageRecord {
        name: name.to_string(),
        target: root.clone(),
        labels,
    };
    let stored = client.put_image(&record).await?;
    tracing::info!(image = name, digest = %root.digest, layers = layers.len(), "image imported");
    Ok(stored)
}

/// Unpacks `layers` into committed snapshots named by chain id, skipping committed ones.
async fn unpack(
    client: &ContainerdClient,
    op: &str,
    layers: &[Descriptor],
    diff_ids: &[String],
    chain: &[String],
    lease: Option<&str>,
) -> Result<(), ContainerdError> {
    for (i, layer) in layers.iter().enumerate() {
        let name = &chain[i];
        if let Some(info) = client.stat_snapshot(name).await?
            && info.kind == SnapshotKind::Committed
        {
            continue;
        }
        let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
        let key = format!("extract-{}-{}", uuid_like(), name);
        let mounts = client
            .prepare_snapshot(&key, parent, HashMap::new(), lease)
            .await?;
        let applied = match client.apply_layer(layer, mounts).await {
            Ok(applied) => applied,
            Err(err) => {
                let _ = client.remove_snapshot(&key).await;
                return Err(err);
            }
        };
        if applied.digest != diff_ids[i] {
            let _ = client.remove_snapshot(&key).await;
            return Err(ContainerdError::bad_data(
                op,
                format!(
                    "layer {} unpacked to {} but the config says {}",
                    layer.digest, applied.digest, diff_ids[i]
                ),
            ));
        }
        match client
            .commit_snapshot(name, &key, HashMap::new(), lease)
            .await
        {
            Ok(()) => {}
            Err(err) if err.is_already_exists() => {
                // Someone else committed the same layer meanwhile: theirs is as good.
                client.remove_snapshot(&key).await?;
            }
            Err(err) => {
                let _ = client.remove_snapshot(&key).await;
                return Err(err);
            }
        }
        tracing::debug!(layer = %layer.digest, chain_id = %name, "layer unpacked");
    }
    Ok(())
}

/// Imports the image of OCI layout `dir` (its `index.json` must list exactly one manifest,
/// or one for linux on this architecture) as `name`. See [`import_image`].
pub async fn import_oci_layout(
    client: &ContainerdClient,
    dir: impl AsRef<Path>,
    name: &str,
) -> Result<ImageRecord, ContainerdError> {
    let dir = dir.as_ref();
    let op = format!("import OCI layout {} as {name}", dir.display());
    let index_bytes =
        tokio::fs::read(dir.join("index.json"))
            .await
            .map_err(|e| ContainerdError::Source {
                operation: format!("{op}: read index.json"),
                source: Box::new(e),
            })?;
    let index: ImageIndex = parse(&op, "index.json", &index_bytes)?;
    let root = pick_manifest(&op, &index)?;
    import_image(
        client,
        &LayoutBlobSource::new(dir),
        &root,
        name,
        HashMap::new(),
    )
    .await
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn layout_source_refuses_digests_that_could_escape_its_dir() {
        let source = LayoutBlobSource::new("/tmp");
        let desc = Descriptor {
            media_type: "x".into(),
            digest: "sha256:../../etc/passwd".into(),
            size: 1,
        };
        assert!(source.open(&desc).await.is_err());
    }
}
