//! Pushes an [`ImagePlan`] to a registry through the distribution HTTP API: HEAD to skip
//! blobs already there, monolithic uploads for small blobs, chunked PATCH uploads for large
//! ones, then child manifests by digest and the manifest under its tag.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Client, StatusCode, Url};
use serde_json::Value;

use super::layout::{BlobSource, ImagePlan, PlannedBlob, PlannedManifest};
use super::tarball::{Tarball, TarballError};
use crate::registry::{Digest, RepoName};

/// Blobs up to this size go in one request; larger ones in chunks of this size.
pub const CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// Failures talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The registry URL is unusable.
    #[error("invalid registry URL {url:?}: {message}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The registry could not be reached.
    #[error("registry at {url} is unreachable: {source}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry refused a request.
    #[error("registry refused {what}: HTTP {status} {code}: {message}")]
    Refused {
        /// What was being pushed.
        what: String,
        /// HTTP status.
        status: StatusCode,
        /// Spec error code, if the body had one.
        code: String,
        /// The registry's message.
        message: String,
    },
    /// The token or the CA for the registry is unusable.
    #[error("cannot set up access to the registry: {0}")]
    Access(#[source] converge_reconcilers::artifacts::PullError),
    /// Reading the archive failed while pushing.
    #[error(transparent)]
    Tarball(#[from] TarballError),
    /// A blocking read task failed.
    #[error("reading the archive was interrupted: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushSummary {
    /// Blobs uploaded.
    pub pushed: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
}

/// A client for one repository of one registry.
pub struct RegistryPusher {
    client: Client,
    base: Url,
    repository: RepoName,
}

async fn refused(what: String, resp: reqwest::Response) -> PushError {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let first = &body["errors"][0];
    PushError::Refused {
        what,
        status,
        code: first["code"].as_str().unwrap_or("").to_string(),
        message: first["message"].as_str().unwrap_or("").to_string(),
    }
}

impl RegistryPusher {
    /// A pusher for `repository` at `registry_url` (e.g. `http://127.0.0.1:5000`). Fails on
    /// an unparsable URL.
    pub fn new(registry_url: &str, repository: RepoName) -> Result<Self, PushError> {
        let bad = |message: String| PushError::BadUrl {
            url: registry_url.to_string(),
            message,
        };
        let base = Url::parse(registry_url).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("scheme must be http or https".into()));
        }
        let client = Client::builder().build().map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            client,
            base,
            repository,
        })
    }

    /// The same pusher, sending `token` as `Authorization: Bearer <token>` (marked
    /// sensitive) and verifying an `https` registry with the CA certificate(s) in `ca_pem`.
    /// Fails on an unusable token or CA.
    pub fn with_access(
        mut self,
        token: Option<&converge_watch::BearerToken>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, PushError> {
        self.client = converge_reconcilers::artifacts::pull::registry_http_client(token, ca_pem)
            .map_err(PushError::Access)?;
        Ok(self)
    }

    fn url(&self, path: &str) -> Result<Url, PushError> {
        self.base.join(path).map_err(|e| PushError::BadUrl {
            url: format!("{}{path}", self.base),
            message: e.to_string(),
        })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, PushError> {
        req.send().await.map_err(|source| PushError::Unreachable {
            url: url.to_string(),
            source,
        })
    }

    /// Pushes every blob, child manifest and the manifest of `plan` (tagged `tag`), reading
    /// blob bytes from `tar`. Shows `progress` as blob bytes go out.
    pub async fn push(
        &self,
        tar: Arc<Tarball>,
        plan: &ImagePlan,
        tag: &str,
        progress: &ProgressBar,
    ) -> Result<PushSummary, PushError> {
        let mut summary = PushSummary::default();
        for blob in &plan.blobs {
            if self.blob_exists(&blob.digest).await? {
                summary.skipped += 1;
                progress.inc(blob.size);
                continue;
            }
            self.push_blob(&tar, blob, progress).await?;
            summary.pushed += 1;
        }
        for child in &plan.children {
            self.put_manifest(child, child.digest.as_str()).await?;
        }
        self.put_manifest(&plan.manifest, tag).await?;
        Ok(summary)
    }

    /// True when the registry already has `digest`.
    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool, PushError> {
        let url = self.url(&format!("/v2/{}/blobs/{digest}", self.repository))?;
        let resp = self.send(self.client.head(url.clone()), &url).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(refused(format!("HEAD blob {digest}"), resp).await),
        }
    }

    async fn read(
        tar: &Arc<Tarball>,
        source: &BlobSource,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, PushError> {
        match source {
            BlobSource::Bytes(b) => Ok(b[offset as usize..(offset + len) as usize].to_vec()),
            BlobSource::Member(m) => {
                let tar = tar.clone();
                let at = m.offset + offset;
                Ok(tokio::task::spawn_blocking(move || tar.read_at(at, len as usize)).await??)
            }
        }
    }

    async fn push_blob(
        &self,
        tar: &Arc<Tarball>,
        blob: &PlannedBlob,
        progress: &ProgressBar,
    ) -> Result<(), PushError> {
        let what = format!("blob {}", blob.digest);
        let uploads = self.url(&format!("/v2/{}/blobs/uploads/", self.repository))?;
        if blob.size <= CHUNK_BYTES {
            let bytes = Self::read(tar, &blob.source, 0, blob.size).await?;
            let mut url = uploads.clone();
            url.query_pairs_mut()
                .append_pair("digest", blob.digest.as_str());
            let req = self
                .client
                .post(url.clone())
                .header("Content-Type", "application/octet-stream")
                .body(bytes);
            let resp = self.send(req, &url).await?;
            if resp.status() != StatusCode::CREATED {
                return Err(refused(what, resp).await);
            }
            progress.inc(blob.size);
            return Ok(());
        }
        let resp = self
            .send(self.client.post(uploads.clone()), &uploads)
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(refused(what, resp).await);
        }
        let mut location = self.location(&resp, &uploads)?;
        let mut offset = 0;
        while offset < blob.size {
            let len = CHUNK_BYTES.min(blob.size - offset);
            let chunk = Self::read(tar, &blob.source, offset, len).await?;
            let req = self
                .client
                .patch(location.clone())
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{offset}-{}", offset + len - 1))
                .body(chunk);
            let resp = self.send(req, &location).await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(refused(what, resp).await);
            }
            location = self.location(&resp, &location)?;
            offset += len;
            progress.inc(len);
        }
        let mut url = location;
        url.query_pairs_mut()
            .append_pair("digest", blob.digest.as_str());
        let resp = self.send(self.client.put(url.clone()), &url).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(refused(what, resp).await);
        }
        Ok(())
    }

    fn location(&self, resp: &reqwest::Response, base: &Url) -> Result<Url, PushError> {
        let loc = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PushError::Refused {
                what: "upload".into(),
                status: resp.status(),
                code: String::new(),
                message: "response has no Location header".into(),
            })?;
        base.join(loc).map_err(|e| PushError::BadUrl {
            url: loc.to_string(),
            message: e.to_string(),
        })
    }

    /// PUTs a manifest under `reference` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        manifest: &PlannedManifest,
        reference: &str,
    ) -> Result<(), PushError> {
        let url = self.url(&format!("/v2/{}/manifests/{reference}", self.repository))?;
        let req = self
            .client
            .put(url.clone())
            .header("Content-Type", manifest.media_type.as_str())
            .body(manifest.bytes.clone());
        let resp = self.send(req, &url).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(refused(format!("manifest {}", manifest.digest), resp).await);
        }
        Ok(())
    }
}

/// Images smaller than this push without a progress bar.
pub const PROGRESS_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// A byte progress bar on stderr for images of at least [`PROGRESS_MIN_BYTES`] when stderr
/// is a terminal; hidden (drawing nothing) otherwise.
pub fn progress_bar(total: u64) -> ProgressBar {
    use std::io::IsTerminal;
    if total < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} pushing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
