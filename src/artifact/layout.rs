//! Turns an image tar (OCI image layout archive or `docker save` output) into an [`ImagePlan`]:
//! every blob to push with its verified digest, child manifests, and the manifest to tag.
//! Everything is checked before anything is pushed, so a bad archive changes nothing.

mod docker_save;

use std::collections::HashSet;

use serde_json::Value;

use super::reference::ImageRef;
use super::tarball::{Member, Tarball, TarballError};
use crate::registry::media;
use crate::registry::{Digest, NameError};

/// Largest manifest, index or config read into memory.
const MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Why an archive cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The tar itself is unreadable or lacks a member.
    #[error(transparent)]
    Tarball(#[from] TarballError),
    /// Neither an OCI layout nor a `docker save` archive.
    #[error("{0} holds neither index.json (OCI layout) nor manifest.json (docker save)")]
    UnknownFormat(String),
    /// A JSON document in the archive does not parse.
    #[error("{member} is not a valid document: {source}")]
    Json {
        /// The member path.
        member: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A document is malformed in another way.
    #[error("{member}: {message}")]
    Invalid {
        /// The member path.
        member: String,
        /// What is wrong.
        message: String,
    },
    /// The archive holds several images and none matches the reference.
    #[error(
        "the archive holds {count} images and none is tagged {wanted}; candidates: {candidates}"
    )]
    Ambiguous {
        /// How many images.
        count: usize,
        /// The reference looked for.
        wanted: String,
        /// Their names, comma separated.
        candidates: String,
    },
    /// A manifest references a blob the archive does not contain.
    #[error("{referenced_by} references blob {digest}, which is not in the archive")]
    MissingBlob {
        /// The missing blob.
        digest: String,
        /// The document naming it.
        referenced_by: String,
    },
    /// A blob's content does not hash to the digest it is stored or referenced under.
    #[error("{member} should hash to {expected} but hashes to {actual}: the archive is corrupt")]
    DigestMismatch {
        /// The member path.
        member: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: Digest,
    },
    /// A blob's size disagrees with its descriptor.
    #[error("{member} has {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        /// The member path.
        member: String,
        /// Size in the descriptor.
        expected: u64,
        /// Size in the archive.
        actual: u64,
    },
}

/// Where a blob's bytes come from.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// A member of the tar.
    Member(Member),
    /// Bytes built in memory.
    Bytes(Vec<u8>),
}

/// One blob to push.
#[derive(Debug, Clone)]
pub struct PlannedBlob {
    /// Its verified digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Where to read it.
    pub source: BlobSource,
}

/// One manifest or index to push.
#[derive(Debug, Clone)]
pub struct PlannedManifest {
    /// Digest of `bytes`.
    pub digest: Digest,
    /// Media type to send as Content-Type.
    pub media_type: String,
    /// The exact document.
    pub bytes: Vec<u8>,
}

/// Everything to push for one image, in push order.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// Configs and layers (deduplicated).
    pub blobs: Vec<PlannedBlob>,
    /// Manifests an index references, pushed by digest before it.
    pub children: Vec<PlannedManifest>,
    /// The manifest (or index) to tag.
    pub manifest: PlannedManifest,
}

impl ImagePlan {
    /// Total bytes of all blobs.
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// Builds and verifies the plan for `image` from an indexed tar. Blocking (hashes every blob).
pub fn plan_image(tar: &Tarball, image: &ImageRef) -> Result<ImagePlan, LayoutError> {
    if tar.member("index.json").is_some() {
        plan_oci(tar, image)
    } else if tar.member("manifest.json").is_some() {
        docker_save::plan_docker_save(tar, image)
    } else {
        Err(LayoutError::UnknownFormat(tar.path().display().to_string()))
    }
}

pub(super) fn read_document(tar: &Tarball, name: &str) -> Result<(Vec<u8>, Value), LayoutError> {
    let member = tar.require(name)?;
    if member.size > MAX_DOCUMENT_BYTES {
        return Err(LayoutError::Invalid {
            member: name.to_string(),
            message: format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
        });
    }
    let bytes = tar.read_member(member)?;
    let doc = serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
        member: name.to_string(),
        source,
    })?;
    Ok((bytes, doc))
}

fn blob_member(digest: &str) -> Result<String, NameError> {
    let d: Digest = digest.parse()?;
    Ok(format!("blobs/sha256/{}", d.hex()))
}

#[derive(Default)]
struct OciPlanner {
    blobs: Vec<PlannedBlob>,
    seen: HashSet<Digest>,
    children: Vec<PlannedManifest>,
}

/// A descriptor's digest, size and media type.
fn descriptor(
    d: &Value,
    owner: &str,
) -> Result<(Digest, Option<u64>, Option<String>), LayoutError> {
    let invalid = |message: String| LayoutError::Invalid {
        member: owner.to_string(),
        message,
    };
    let digest = d
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("a descriptor has no digest".into()))?;
    let digest: Digest = digest
        .parse()
        .map_err(|e: NameError| invalid(e.to_string()))?;
    let size = d.get("size").and_then(Value::as_u64);
    let media_type = d
        .get("mediaType")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((digest, size, media_type))
}

impl OciPlanner {
    /// Locates and verifies a blob referenced by `owner`.
    fn verified(
        &self,
        tar: &Tarball,
        digest: &Digest,
        size: Option<u64>,
        owner: &str,
    ) -> Result<(Member, String), LayoutError> {
        let name = blob_member(digest.as_str()).map_err(|e| LayoutError::Invalid {
            member: owner.to_string(),
            message: e.to_string(),
        })?;
        let member = tar.member(&name).ok_or_else(|| LayoutError::MissingBlob {
            digest: digest.to_string(),
            referenced_by: owner.to_string(),
        })?;
        if let Some(expected) = size
            && expected != member.size
        {
            return Err(LayoutError::SizeMismatch {
                member: name,
                expected,
                actual: member.size,
            });
        }
        let (actual, _) = tar.digest_member(member)?;
        if &actual != digest {
            return Err(LayoutError::DigestMismatch {
                member: name,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok((member, name))
    }

    fn add_blob(&mut self, tar: &Tarball, desc: &Value, owner: &str) -> Result<(), LayoutError> {
        let (digest, size, _) = descriptor(desc, owner)?;
        if desc
            .get("urls")
            .and_then(Value::as_array)
            .is_some_and(|u| !u.is_empty())
        {
            return Ok(()); // foreign layer: fetched from its URLs, never pushed
        }
        if self.seen.contains(&digest) {
            return Ok(());
        }
        let (member, _) = self.verified(tar, &digest, size, owner)?;
        self.seen.insert(digest.clone());
        self.blobs.push(PlannedBlob {
            digest,
            size: member.size,
            source: BlobSource::Member(member),
        });
        Ok(())
    }

    /// Plans a manifest or index named by `desc`; returns it (children are recorded).
    fn add_manifest(
        &mut self,
        tar: &Tarball,
        desc: &Value,
        owner: &str,
    ) -> Result<PlannedManifest, LayoutError> {
        let (digest, size, desc_type) = descriptor(desc, owner)?;
        let (member, name) = self.verified(tar, &digest, size, owner)?;
        if member.size > MAX_DOCUMENT_BYTES {
            return Err(LayoutError::Invalid {
                member: name,
                message: "manifest too large".into(),
            });
        }
        let bytes = tar.read_member(member)?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
            member: name.clone(),
            source,
        })?;
        let media_type = doc
            .get("mediaType")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(desc_type)
            .unwrap_or_else(|| {
                if doc.get("manifests").is_some() {
                    media::OCI_INDEX
                } else {
                    media::OCI_MANIFEST
                }
                .to_string()
            });
        if media::is_index(&media_type) {
            let children = doc
                .get("manifests")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for child in &children {
                let planned = self.add_manifest(tar, child, &name)?;
                self.children.push(planned);
            }
        } else {
            let config = doc.get("config").ok_or_else(|| LayoutError::Invalid {
                member: name.clone(),
                message: "manifest has no config".into(),
            })?;
            self.add_blob(tar, config, &name)?;
            for layer in doc
                .get("layers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.add_blob(tar, layer, &name)?;
            }
        }
        Ok(PlannedManifest {
            digest,
            media_type,
            bytes,
        })
    }
}

fn plan_oci(tar: &Tarball, image: &ImageRef) -> Result<ImagePlan, LayoutError> {
    let (_, index) = read_document(tar, "index.json")?;
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ref_name = |d: &Value| {
        d.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let chosen = match manifests.as_slice() {
        [] => {
            return Err(LayoutError::Invalid {
                member: "index.json".into(),
                message: "lists no manifests".into(),
            });
        }
        [only] => only.clone(),
        many => {
            let wanted = [
                image.tag.to_string(),
                image.to_string(),
                format!("{}:{}", image.repository, image.tag),
            ];
            match many
                .iter()
                .find(|d| ref_name(d).is_some_and(|r| wanted.contains(&r)))
            {
                Some(d) => d.clone(),
                None => {
                    let names: Vec<String> = many
                        .iter()
                        .map(|d| ref_name(d).unwrap_or_else(|| "<untagged>".into()))
                        .collect();
                    return Err(LayoutError::Ambiguous {
                        count: many.len(),
                        wanted: image.to_string(),
                        candidates: names.join(", "),
                    });
                }
            }
        }
    };
    let mut planner = OciPlanner::default();
    let manifest = planner.add_manifest(tar, &chosen, "index.json")?;
    Ok(ImagePlan {
        blobs: planner.blobs,
        children: planner.children,
        manifest,
    })
}
