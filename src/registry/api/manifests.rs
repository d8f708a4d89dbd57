//! Manifest put, get and delete: manifests are stored as blobs, linked to their repository,
//! and only accepted once every blob (or child manifest) they reference is present.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::Value;

use super::ApiResult;
use super::blobs::{DIGEST_HEADER, Request};
use crate::registry::error::ApiError;
use crate::registry::media::{DescriptorError, OCI_INDEX, OCI_MANIFEST, referenced_digests};
use crate::registry::names::{Digest, Reference};
use crate::registry::store::MAX_MANIFEST_BYTES;

/// The media type a stored manifest is served with: its own `mediaType`, else guessed from
/// its shape (an index has `manifests`).
pub fn manifest_media_type(doc: &Value) -> &str {
    match doc.get("mediaType").and_then(Value::as_str) {
        Some(mt) if !mt.is_empty() => mt,
        _ if doc.get("manifests").is_some() => OCI_INDEX,
        _ => OCI_MANIFEST,
    }
}

fn manifest_headers(digest: &Digest, media_type: &str, len: usize) -> Result<HeaderMap, ApiError> {
    let mut headers = HeaderMap::new();
    let bad = |_| ApiError::manifest_invalid(format!("unusable media type {media_type:?}"));
    headers.insert(
        DIGEST_HEADER,
        HeaderValue::from_str(digest.as_str()).map_err(bad)?,
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(media_type).map_err(bad)?,
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(headers)
}

fn blob_unknown(blob: &Digest, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "MANIFEST_BLOB_UNKNOWN",
        format!("manifest references blob {blob}, {why}"),
    )
}

pub(super) async fn put_manifest(req: &Request<'_>, reference: &str, body: Body) -> ApiResult {
    let reference: Reference = reference.parse()?;
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST_BYTES as usize)
        .await
        .map_err(|e| ApiError::manifest_invalid(format!("reading manifest body: {e}")))?;
    let digest = Digest::of(&bytes);
    if let Reference::Digest(named) = &reference
        && named != &digest
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("manifest hashes to {digest}, not {named}"),
        ));
    }
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::manifest_invalid(format!("manifest is not JSON: {e}")))?;
    if doc.get("schemaVersion").and_then(Value::as_i64) != Some(2) {
        return Err(ApiError::manifest_invalid(
            "only schemaVersion 2 manifests are accepted",
        ));
    }
    let (blobs, children) = referenced_digests(&doc).map_err(|e| match e {
        DescriptorError::BadDigest(e) => ApiError::from(e),
        other => ApiError::manifest_invalid(other.to_string()),
    })?;
    let referenced: Vec<Digest> = blobs.into_iter().chain(children.iter().cloned()).collect();
    // Vouch for every referenced blob before linking: each mtime becomes now, so a blob GC
    // pass that chose one of them (an old layer of an archived artifact, say) keeps it at
    // its final re-check, and the next pass sees this manifest linked (docs/gc.md).
    for blob in &referenced {
        if !req.store.touch_blob(blob).await? {
            return Err(blob_unknown(blob, "which is not in the registry"));
        }
    }
    // An index's children were stored earlier, maybe long ago: what they reference needs
    // the same protection. A child that does not parse keeps only itself (already touched).
    for child in &children {
        if let Ok(reachable) = req.store.reachable_from(child).await {
            for blob in reachable.iter().filter(|b| !referenced.contains(b)) {
                req.store.touch_blob(blob).await?;
            }
        }
    }
    let stored = req.store.put_blob(&bytes).await?;
    let tag = match &reference {
        Reference::Tag(t) => Some(t),
        Reference::Digest(_) => None,
    };
    req.store.link_manifest(req.name, &stored, tag).await?;
    // A sweep that checked a blob's mtime just before our touch may still unlink it (or, for
    // a byte-identical re-push, remove the link just written). Check after linking so such
    // a push fails instead of reporting success over a hole.
    for blob in &referenced {
        if req.store.blob_info(blob).await?.is_none() {
            return Err(blob_unknown(
                blob,
                "which was removed while the manifest was stored; push it again",
            ));
        }
    }
    // Re-link what a sweep removed (never re-point a tag another push has moved since).
    let link_gone = req
        .store
        .resolve(req.name, &Reference::Digest(stored.clone()))
        .await?
        .is_none();
    let tag_gone = match tag {
        Some(t) => req
            .store
            .resolve(req.name, &Reference::Tag(t.clone()))
            .await?
            .is_none(),
        None => false,
    };
    if link_gone || tag_gone {
        let tag = tag.filter(|_| tag_gone);
        req.store.link_manifest(req.name, &stored, tag).await?;
    }
    // An index's children must be pullable by digest from this repository; a sweep may have
    // removed a child's link before the touch above saved its blob.
    for child in &children {
        let linked = req
            .store
            .resolve(req.name, &Reference::Digest(child.clone()))
            .await?;
        if linked.is_none() {
            req.store.link_manifest(req.name, child, None).await?;
        }
    }
    tracing::info!(%reference, digest = %stored, "manifest stored");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v2/{}/manifests/{stored}", req.name))
            .map_err(|_| ApiError::manifest_invalid("unusable location"))?,
    );
    headers.insert(
        DIGEST_HEADER,
        HeaderValue::from_str(stored.as_str()).map_err(|_| ApiError::manifest_invalid("digest"))?,
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    Ok((StatusCode::CREATED, headers).into_response())
}

pub(super) async fn get_manifest(req: &Request<'_>, reference: &str, head_only: bool) -> ApiResult {
    let reference: Reference = reference.parse()?;
    let Some(digest) = req.store.resolve(req.name, &reference).await? else {
        return Err(ApiError::manifest_unknown(&reference));
    };
    let Some(bytes) = req.store.read_manifest(&digest).await? else {
        return Err(ApiError::manifest_unknown(&reference));
    };
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let headers = manifest_headers(&digest, manifest_media_type(&doc), bytes.len())?;
    if head_only {
        return Ok((StatusCode::OK, headers).into_response());
    }
    Ok((StatusCode::OK, headers, bytes).into_response())
}

pub(super) async fn delete_manifest(req: &Request<'_>, reference: &str) -> ApiResult {
    let reference: Reference = reference.parse()?;
    let existed = match &reference {
        Reference::Tag(tag) => req.store.untag(req.name, tag).await?,
        Reference::Digest(d) => req.store.delete_manifest(req.name, d).await?,
    };
    if existed {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(ApiError::manifest_unknown(&reference))
    }
}
