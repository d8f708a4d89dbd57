//! `docker save` archives: `manifest.json` names a config file and layer tars; they become an
//! OCI manifest (layers kept as they are, typed `tar` or `tar+gzip` by their first bytes).

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{BlobSource, ImagePlan, LayoutError, PlannedBlob, PlannedManifest, read_document};
use crate::artifact::reference::ImageRef;
use crate::artifact::tarball::Tarball;
use crate::registry::{Digest, media};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Builds the plan for `image` from a `docker save` tar; uncompressed layers are checked
/// against the config's `rootfs.diff_ids`.
pub(super) fn plan_docker_save(tar: &Tarball, image: &ImageRef) -> Result<ImagePlan, LayoutError> {
    let (bytes, _) = read_document(tar, "manifest.json")?;
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
            member: "manifest.json".into(),
            source,
        })?;
    let wanted = [
        image.to_string(),
        format!("{}:{}", image.repository, image.tag),
    ];
    let entry = match entries.as_slice() {
        [] => {
            return Err(LayoutError::Invalid {
                member: "manifest.json".into(),
                message: "lists no images".into(),
            });
        }
        [only] => only,
        many => match many
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| wanted.contains(t)))
        {
            Some(e) => e,
            None => {
                let names: Vec<String> = many
                    .iter()
                    .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                    .collect();
                return Err(LayoutError::Ambiguous {
                    count: many.len(),
                    wanted: image.to_string(),
                    candidates: names.join(", "),
                });
            }
        },
    };
    let (config_bytes, config_doc) = read_document(tar, &entry.config)?;
    let config_digest = Digest::of(&config_bytes);
    let diff_ids: Vec<String> = config_doc
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != entry.layers.len() {
        return Err(LayoutError::Invalid {
            member: entry.config.clone(),
            message: format!(
                "config lists {} layers but manifest.json {}",
                diff_ids.len(),
                entry.layers.len()
            ),
        });
    }
    let mut blobs = vec![PlannedBlob {
        digest: config_digest.clone(),
        size: config_bytes.len() as u64,
        source: BlobSource::Bytes(config_bytes),
    }];
    let mut layers = Vec::new();
    let mut seen = HashSet::new();
    for (path, diff_id) in entry.layers.iter().zip(&diff_ids) {
        let member = tar.require(path)?;
        let (digest, gzip) = tar.digest_member(member)?;
        if !gzip && digest.as_str() != diff_id {
            return Err(LayoutError::DigestMismatch {
                member: path.clone(),
                expected: diff_id.clone(),
                actual: digest,
            });
        }
        let media_type = if gzip {
            media::OCI_LAYER_TAR_GZIP
        } else {
            media::OCI_LAYER_TAR
        };
        layers
            .push(json!({"mediaType": media_type, "digest": digest.as_str(), "size": member.size}));
        if seen.insert(digest.clone()) {
            blobs.push(PlannedBlob {
                digest,
                size: member.size,
                source: BlobSource::Member(member),
            });
        }
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.as_str(), "size": blobs[0].size},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|source| LayoutError::Json {
        member: "manifest.json".into(),
        source,
    })?;
    Ok(ImagePlan {
        blobs,
        children: Vec::new(),
        manifest: PlannedManifest {
            digest: Digest::of(&bytes),
            media_type: media::OCI_MANIFEST.to_string(),
            bytes,
        },
    })
}
