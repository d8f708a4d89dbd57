//! Blob fetch, delete, and the upload protocol (monolithic, chunked, cross-repository mount).

use std::collections::HashMap;
use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::ApiResult;
use crate::registry::error::ApiError;
use crate::registry::names::{Digest, RepoName};
use crate::registry::store::{ArtifactStore, UploadId};

/// Header carrying a content digest.
pub const DIGEST_HEADER: &str = "Docker-Content-Digest";
/// Header carrying an upload session id.
pub const UPLOAD_UUID_HEADER: &str = "Docker-Upload-UUID";

/// What every handler here needs from the request.
pub(super) struct Request<'a> {
    pub store: &'a ArtifactStore,
    pub name: &'a RepoName,
    pub query: &'a HashMap<String, String>,
    pub headers: &'a HeaderMap,
}

fn header_value(s: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(s).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            format!("bad header value {s:?}"),
        )
    })
}

/// Parses `bytes=START-END` / `bytes=START-` against a blob of `len` bytes.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = if end.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        end.trim().parse::<u64>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

pub(super) async fn get_blob(req: &Request<'_>, digest: &str, head_only: bool) -> ApiResult {
    let digest: Digest = digest.parse()?;
    let Some((mut file, len)) = req.store.open_blob(&digest).await? else {
        return Err(ApiError::blob_unknown(&digest));
    };
    let mut headers = HeaderMap::new();
    headers.insert(DIGEST_HEADER, header_value(digest.as_str())?);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let range = req
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            parse_range(v, len).ok_or_else(|| {
                ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UNKNOWN",
                    format!("bad range {v:?}"),
                )
            })
        })
        .transpose()?;
    let (status, start, count) = match range {
        Some((start, end)) => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{len}"))?,
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, len),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if head_only {
        // A HEAD is how pushers ask "do you have it?" before skipping an upload: vouch for
        // the blob by refreshing its mtime, so a blob GC pass that planned to sweep it keeps
        // it (docs/gc.md, safety rules). Best effort: the manifest PUT that must follow
        // touches every referenced blob again and fails if it cannot.
        if let Err(e) = req.store.touch_blob(&digest).await {
            tracing::warn!(%digest, error = %e, "could not refresh the mtime of a HEADed blob");
        }
        return Ok((status, headers).into_response());
    }
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                format!("seek: {e}"),
            )
        })?;
    }
    let body = Body::from_stream(ReaderStream::new(file.take(count)));
    Ok((status, headers, body).into_response())
}

pub(super) async fn delete_blob(req: &Request<'_>, digest: &str) -> ApiResult {
    let digest: Digest = digest.parse()?;
    if req.store.delete_blob(&digest).await? {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(ApiError::blob_unknown(&digest))
    }
}

fn blob_created(name: &RepoName, digest: &Digest) -> ApiResult {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/blobs/{digest}"))?,
    );
    headers.insert(DIGEST_HEADER, header_value(digest.as_str())?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    Ok((StatusCode::CREATED, headers).into_response())
}

fn upload_accepted(status: StatusCode, name: &RepoName, id: UploadId, size: u64) -> ApiResult {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/blobs/uploads/{id}"))?,
    );
    headers.insert(UPLOAD_UUID_HEADER, header_value(&id.to_string())?);
    // The spec's Range is inclusive; an empty upload reports 0-0.
    headers.insert(
        header::RANGE,
        header_value(&format!("0-{}", size.saturating_sub(1)))?,
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    Ok((status, headers).into_response())
}

fn query_digest(req: &Request<'_>) -> Result<Option<Digest>, ApiError> {
    Ok(req.query.get("digest").map(|d| d.parse()).transpose()?)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `POST /v2/<name>/blobs/uploads/`: mount, monolithic upload, or a new session.
pub(super) async fn start_upload(req: &Request<'_>, body: Body) -> ApiResult {
    if let (Some(mount), Some(from)) = (req.query.get("mount"), req.query.get("from")) {
        let digest: Digest = mount.parse()?;
        let _from: RepoName = from.parse()?;
        // Mounting vouches for the blob: refresh its mtime (blob GC keeps it), and when it is
        // gone (swept meanwhile) fall back to an upload session like a missing blob.
        if req.store.touch_blob(&digest).await? {
            return blob_created(req.name, &digest);
        }
    }
    let id = req.store.start_upload().await?;
    if let Some(digest) = query_digest(req)? {
        let stream = body.into_data_stream();
        let result = async {
            req.store
                .append_upload(id, Some(0), declared_length(req.headers), stream)
                .await?;
            req.store.finish_upload(id, &digest).await
        }
        .await;
        if let Err(e) = result {
            let _ = req.store.cancel_upload(id).await;
            return Err(e.into());
        }
        tracing::debug!(%digest, "blob stored (monolithic)");
        return blob_created(req.name, &digest);
    }
    upload_accepted(StatusCode::ACCEPTED, req.name, id, 0)
}

/// Parses a `Content-Range: START-END` header of a PATCH.
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("invalid Content-Range {v:?}: expected START-END"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let b = b.split('/').next().unwrap_or(b);
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

pub(super) async fn patch_upload(req: &Request<'_>, id: &str, body: Body) -> ApiResult {
    let id: UploadId = id.parse()?;
    let (start, declared) = match content_range(req.headers)? {
        Some((start, end)) => (Some(start), Some(end - start + 1)),
        None => (None, None),
    };
    let size = req
        .store
        .append_upload(id, start, declared, body.into_data_stream())
        .await?;
    upload_accepted(StatusCode::ACCEPTED, req.name, id, size)
}

pub(super) async fn finish_upload(req: &Request<'_>, id: &str, body: Body) -> ApiResult {
    let id: UploadId = id.parse()?;
    let Some(digest) = query_digest(req)? else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "closing an upload needs ?digest=sha256:...",
        ));
    };
    if req.store.upload_info(id).await?.is_none() {
        return Err(ApiError::from(
            crate::registry::store::ArtifactStoreError::UploadUnknown(id.to_string()),
        ));
    }
    req.store
        .append_upload(id, None, None, body.into_data_stream())
        .await?;
    req.store.finish_upload(id, &digest).await?;
    tracing::debug!(%digest, "blob stored");
    blob_created(req.name, &digest)
}

pub(super) async fn upload_status(req: &Request<'_>, id: &str) -> ApiResult {
    let id: UploadId = id.parse()?;
    match req.store.upload_info(id).await? {
        Some(info) => upload_accepted(StatusCode::NO_CONTENT, req.name, id, info.size),
        None => {
            Err(crate::registry::store::ArtifactStoreError::UploadUnknown(id.to_string()).into())
        }
    }
}

pub(super) async fn cancel_upload(req: &Request<'_>, id: &str) -> ApiResult {
    let id: UploadId = id.parse()?;
    if req.store.cancel_upload(id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(crate::registry::store::ArtifactStoreError::UploadUnknown(id.to_string()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_clamped_to_the_blob() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=2-100", 10), Some((2, 9)));
        assert_eq!(parse_range("bytes=5-2", 10), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
    }
}
