//! A [`BlobSource`] over a registry's HTTP API: blobs stream from `/v2/<name>/blobs/<digest>`
//! (manifests from `/manifests/<digest>`), every byte hashed on the way and checked against
//! the descriptor. Typed failures are kept so the puller can report them as such.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use futures::TryStreamExt;
use reqwest::header::HeaderValue;
use reqwest::{Client, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::StreamReader;

use super::pull::PullError;
use crate::containerd::{BlobReader, BlobSource, BlobSourceError, Descriptor};

/// Media types a manifest request accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// True for manifest and index media types (fetched from `/manifests/`, not `/blobs/`).
pub fn is_manifest_type(media_type: &str) -> bool {
    media_type.contains("manifest") || media_type.ends_with("image.index.v1+json")
}

/// Where the first typed failure of a pull is recorded.
pub(super) type FailureSlot = Arc<Mutex<Option<PullError>>>;

fn record(slot: &FailureSlot, err: PullError) {
    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(err);
    }
}

/// GETs `url` from a registry, accepting any manifest type and sending `auth` as
/// `Authorization` when given; returns the response once its status is a success. Fails
/// with `NotFound(missing())` on 404, a typed status error otherwise, `Unavailable` when
/// the request cannot be sent.
pub(super) async fn registry_get(
    http: &Client,
    url: &Url,
    auth: Option<HeaderValue>,
    missing: impl FnOnce() -> String,
) -> Result<Response, PullError> {
    let mut request = http.get(url.clone()).header("Accept", MANIFEST_ACCEPT);
    if let Some(auth) = auth {
        request = request.header(reqwest::header::AUTHORIZATION, auth);
    }
    let resp = request
        .send()
        .await
        .map_err(|e| PullError::unavailable(url, e))?;
    match resp.status() {
        s if s.is_success() => Ok(resp),
        StatusCode::NOT_FOUND => Err(PullError::NotFound(missing())),
        s => Err(PullError::from_status(url, s)),
    }
}

/// Blobs of one repository of one registry.
pub struct RegistryBlobSource {
    pub(super) http: Client,
    /// Sent as `Authorization` on every request, when set.
    pub(super) auth: Option<reqwest::header::HeaderValue>,
    pub(super) base: Url,
    pub(super) repository: String,
    pub(super) failure: FailureSlot,
}

impl RegistryBlobSource {
    fn url(&self, desc: &Descriptor) -> Result<Url, PullError> {
        let kind = if is_manifest_type(&desc.media_type) {
            "manifests"
        } else {
            "blobs"
        };
        self.base
            .join(&format!("/v2/{}/{kind}/{}", self.repository, desc.digest))
            .map_err(|e| PullError::Invalid(format!("cannot build blob URL: {e}")))
    }

    async fn open_typed(&self, desc: &Descriptor) -> Result<BlobReader, PullError> {
        if !crate::containerd::is_valid_sha256_digest(&desc.digest) {
            return Err(PullError::Invalid(format!(
                "{:?} is not a sha256 digest",
                desc.digest
            )));
        }
        let url = self.url(desc)?;
        let resp = registry_get(&self.http, &url, self.auth.clone(), || {
            format!("blob {} at {url}", desc.digest)
        })
        .await?;
        let stream = resp.bytes_stream().map_err(io::Error::other);
        Ok(Box::pin(VerifyingReader {
            inner: StreamReader::new(stream),
            hasher: Sha256::new(),
            seen: 0,
            digest: desc.digest.clone(),
            size: desc.size,
            failure: self.failure.clone(),
        }))
    }
}

#[async_trait]
impl BlobSource for RegistryBlobSource {
    async fn open(&self, desc: &Descriptor) -> Result<BlobReader, BlobSourceError> {
        match self.open_typed(desc).await {
            Ok(reader) => Ok(reader),
            Err(e) => {
                let message = e.to_string();
                record(&self.failure, e);
                Err(message.into())
            }
        }
    }
}

/// Passes bytes through while hashing them; at end of stream the size and digest must match
/// the descriptor, otherwise the read fails with `InvalidData` (and the mismatch is recorded).
struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    seen: u64,
    digest: String,
    size: u64,
    failure: FailureSlot,
}

impl<R> VerifyingReader<R> {
    fn fail(&self, actual: String) -> io::Error {
        let err = PullError::DigestMismatch {
            expected: self.digest.clone(),
            actual,
        };
        let message = err.to_string();
        record(&self.failure, err);
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        if fresh.is_empty() && buf.remaining() > 0 {
            let actual = format!("sha256:{}", hex::encode(this.hasher.clone().finalize()));
            if this.seen != this.size || actual != this.digest {
                return Poll::Ready(Err(this.fail(format!("{actual} ({} bytes)", this.seen))));
            }
            return Poll::Ready(Ok(()));
        }
        this.hasher.update(fresh);
        this.seen += fresh.len() as u64;
        if this.seen > this.size {
            return Poll::Ready(Err(this.fail(format!("more than {} bytes", this.size))));
        }
        Poll::Ready(Ok(()))
    }
}
