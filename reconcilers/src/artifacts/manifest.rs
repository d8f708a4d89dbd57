//! Resolving an image reference to its root manifest: one GET, size and digest checks, media type.

use reqwest::header::HeaderValue;
use reqwest::{Client, Url};
use sha2::{Digest as _, Sha256};

use super::pull::{MAX_MANIFEST_BYTES, PullError};
use super::reference::{ImageReference, Pin};
use super::source::{is_manifest_type, registry_get};
use crate::containerd::Descriptor;

/// GETs the manifest the reference names from the registry at `base` (sending `auth` as
/// `Authorization` when given) and returns its descriptor. Fails with `NotFound`, a
/// status or transport error, `Invalid` for an oversized or unreadable manifest, and
/// `DigestMismatch` when its bytes do not hash to the pinned or announced digest.
pub(super) async fn resolve_manifest(
    http: &Client,
    auth: Option<HeaderValue>,
    parsed: &ImageReference,
    base: &Url,
) -> Result<Descriptor, PullError> {
    let url = base
        .join(&format!(
            "/v2/{}/manifests/{}",
            parsed.repository,
            parsed.pin_str()
        ))
        .map_err(|e| PullError::Invalid(format!("cannot build manifest URL: {e}")))?;
    let resp = registry_get(http, &url, auth, || format!("manifest {parsed}")).await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
    };
    let content_type = header("Content-Type");
    let announced = header("Docker-Content-Digest");
    let body = resp
        .bytes()
        .await
        .map_err(|e| PullError::unavailable(&url, e))?;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(PullError::Invalid(format!(
            "manifest {parsed} is larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let expected = match &parsed.pin {
        Pin::Digest(d) => Some(d.clone()),
        Pin::Tag(_) => announced,
    };
    if let Some(expected) = expected
        && expected != digest
    {
        return Err(PullError::DigestMismatch {
            expected,
            actual: digest,
        });
    }
    let media_type = match content_type {
        Some(ct) if is_manifest_type(&ct) => ct,
        _ => {
            let doc: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| PullError::Invalid(format!("manifest {parsed} is not JSON: {e}")))?;
            match doc.get("mediaType").and_then(|m| m.as_str()) {
                Some(mt) => mt.to_string(),
                None if doc.get("manifests").is_some() => {
                    "application/vnd.oci.image.index.v1+json".into()
                }
                None => "application/vnd.oci.image.manifest.v1+json".into(),
            }
        }
    };
    Ok(Descriptor {
        media_type,
        digest,
        size: body.len() as u64,
    })
}
