//! Pulls images from the artifact registry into containerd: resolve the manifest over HTTP,
//! then hand a verifying registry blob source to the containerd adapter's importer (content
//! writes with gc labels under a lease, image record, layer unpack). Idempotent, resumable
//! (blobs already in the content store are not fetched again), and one pull per image at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::header::HeaderValue;
use reqwest::{Client, StatusCode, Url};
use tracing::Instrument;

use super::manifest::resolve_manifest;
use super::reference::{ImageReference, ReferenceError};
use super::source::{FailureSlot, RegistryBlobSource};
use crate::containerd::{
    ContainerdClient, ContainerdError, ImageRecord, SnapshotKind, import_image,
};

/// Host under which references name images of converge's own registry.
pub const CLUSTER_REGISTRY_HOST: &str = "cluster.local:5000";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference names a registry the puller has no URL for.
    #[error(
        "image {0} is not under {CLUSTER_REGISTRY_HOST}/ and no other registry is configured for it"
    )]
    UnknownRegistry(String),
    /// The reference or a registry answer is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The manifest or a blob does not exist in the registry.
    #[error("not found: {0}")]
    NotFound(String),
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: String,
        /// What the content hashed to.
        actual: String,
    },
    /// The registry could not be reached or failed; retrying later may help.
    #[error("registry unavailable at {url}: {message}")]
    Unavailable {
        /// The URL requested.
        url: String,
        /// What happened.
        message: String,
    },
    /// The registry refused the request for another reason.
    #[error("registry refused {url}: HTTP {status}")]
    Rejected {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: StatusCode,
    },
    /// containerd failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
}

impl From<ReferenceError> for PullError {
    fn from(e: ReferenceError) -> Self {
        PullError::Invalid(e.to_string())
    }
}

impl PullError {
    pub(super) fn unavailable(url: &Url, e: reqwest::Error) -> Self {
        PullError::Unavailable {
            url: url.to_string(),
            message: e.to_string(),
        }
    }

    pub(super) fn from_status(url: &Url, status: StatusCode) -> Self {
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            PullError::Unavailable {
                url: url.to_string(),
                message: format!("HTTP {status}"),
            }
        } else {
            PullError::Rejected {
                url: url.to_string(),
                status,
            }
        }
    }

    /// True when retrying later may succeed (registry or containerd temporarily unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            PullError::Unavailable { .. } => true,
            PullError::Containerd(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// The image record in containerd, named by the reference as given.
    pub record: ImageRecord,
    /// False when containerd already had the image complete and nothing was fetched.
    pub fetched: bool,
}

/// Pulls images into containerd from configured registries. Share one per process: it
/// makes concurrent pulls of one image wait for each other, so the image is fetched once.
pub struct ImagePuller {
    http: Client,
    /// `Authorization` for the cluster registry only (never sent to other registries).
    cluster_auth: Option<HeaderValue>,
    registries: HashMap<String, Url>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    fetches: AtomicU64,
}

fn parse_url(url: &str) -> Result<Url, PullError> {
    let parsed = Url::parse(url)
        .map_err(|e| PullError::Invalid(format!("invalid registry URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(PullError::Invalid(format!(
            "registry URL {url:?} must be http or https"
        )));
    }
    Ok(parsed)
}

/// `Bearer <token>` as a header value marked sensitive; fails when the token cannot be a
/// header value.
fn bearer_header(token: &converge_watch::BearerToken) -> Result<HeaderValue, PullError> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose()))
        .map_err(|_| PullError::Invalid("the token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// An HTTP client for one registry: the token as a default (sensitive) `Authorization`
/// header, `ca_pem` as the only trusted roots. Fails on an unusable token or CA.
pub fn registry_http_client(
    token: Option<&converge_watch::BearerToken>,
    ca_pem: Option<&[u8]>,
) -> Result<Client, PullError> {
    let mut builder = Client::builder();
    if let Some(token) = token {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, bearer_header(token)?);
        builder = builder.default_headers(headers);
    }
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| PullError::Invalid(format!("the registry CA is not PEM: {e}")))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| PullError::Invalid(format!("cannot build HTTP client: {e}")))
}

impl ImagePuller {
    /// A puller fetching `cluster.local:5000/...` images from `registry_url`
    /// (e.g. `http://127.0.0.1:5000`). Fails on an unusable URL.
    pub fn new(registry_url: &str) -> Result<Self, PullError> {
        let http = Client::builder()
            .build()
            .map_err(|e| PullError::Invalid(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            cluster_auth: None,
            registries: HashMap::from([(
                CLUSTER_REGISTRY_HOST.to_string(),
                parse_url(registry_url)?,
            )]),
            inflight: Mutex::default(),
            fetches: AtomicU64::new(0),
        })
    }

    /// The same puller, sending `token` as `Authorization: Bearer <token>` on every request
    /// to the cluster registry (`cluster.local:5000/...` images; never to other registries;
    /// the header is marked sensitive, so it is never logged) and verifying an `https`
    /// registry with the CA certificate(s) in `ca_pem` (no other roots are trusted; an
    /// `https` registry without a CA cannot be verified). Fails on a CA that is not PEM.
    pub fn with_access(
        mut self,
        token: Option<&converge_watch::BearerToken>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, PullError> {
        self.http = registry_http_client(None, ca_pem)?;
        self.cluster_auth = token.map(bearer_header).transpose()?;
        Ok(self)
    }

    /// Also serves references under `host/` from `url`.
    pub fn with_registry(mut self, host: &str, url: &str) -> Result<Self, PullError> {
        self.registries.insert(host.to_string(), parse_url(url)?);
        Ok(self)
    }

    /// The `Authorization` header for requests about `parsed`: the token for the cluster
    /// registry, nothing for any other.
    fn auth_for(&self, parsed: &ImageReference) -> Option<HeaderValue> {
        if parsed.host == CLUSTER_REGISTRY_HOST {
            self.cluster_auth.clone()
        } else {
            None
        }
    }

    /// How many pulls actually fetched and imported something (for metrics and tests).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn image_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_string()).or_default().clone()
    }

    fn release_lock(&self, key: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this caller hold it: nobody waits, so forget it.
        if Arc::strong_count(&lock) == 2 {
            map.remove(key);
        }
    }

    /// Makes containerd hold image `reference` (`cluster.local:5000/NAME:TAG` or
    /// `...@sha256:...`) as a record of that name with its layers unpacked. When containerd
    /// already has the same manifest complete, nothing is fetched. Fails with
    /// [`PullError::UnknownRegistry`], `NotFound`, `DigestMismatch`, `Unavailable`, ...;
    /// a failed pull leaves no image record and its partial content to containerd's GC
    /// (or to the next attempt, which resumes it).
    pub async fn pull(
        &self,
        containerd: &ContainerdClient,
        reference: &str,
    ) -> Result<PullOutcome, PullError> {
        let parsed = ImageReference::parse(reference)?;
        let base = self
            .registries
            .get(&parsed.host)
            .ok_or_else(|| PullError::UnknownRegistry(reference.to_string()))?
            .clone();
        let lock = self.image_lock(reference);
        let result = {
            let _guard = lock.lock().await;
            self.pull_locked(containerd, reference, &parsed, &base)
                .instrument(tracing::info_span!("pull", image = reference))
                .await
        };
        self.release_lock(reference, lock);
        result
    }

    async fn pull_locked(
        &self,
        containerd: &ContainerdClient,
        name: &str,
        parsed: &ImageReference,
        base: &Url,
    ) -> Result<PullOutcome, PullError> {
        let root = resolve_manifest(&self.http, self.auth_for(parsed), parsed, base).await?;
        if let Some(record) = containerd.get_image(name).await?
            && record.target.digest == root.digest
            && image_complete(containerd, name).await?
        {
            tracing::debug!(digest = %root.digest, "image already present");
            return Ok(PullOutcome {
                record,
                fetched: false,
            });
        }
        let failure: FailureSlot = Arc::default();
        let source = RegistryBlobSource {
            http: self.http.clone(),
            auth: self.auth_for(parsed),
            base: base.clone(),
            repository: parsed.repository.clone(),
            failure: failure.clone(),
        };
        match import_image(containerd, &source, &root, name, HashMap::new()).await {
            Ok(record) => {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                tracing::info!(digest = %root.digest, "image pulled");
                Ok(PullOutcome {
                    record,
                    fetched: true,
                })
            }
            Err(err) => {
                let typed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
                Err(typed.unwrap_or(PullError::Containerd(err)))
            }
        }
    }
}

/// True when image `name` resolves and its top layer snapshot is committed.
async fn image_complete(containerd: &ContainerdClient, name: &str) -> Result<bool, PullError> {
    let resolved = match containerd.resolve_image(name).await {
        Ok(r) => r,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(ContainerdError::BadData { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let top = resolved.top_chain_id();
    if top.is_empty() {
        return Ok(true);
    }
    Ok(containerd
        .stat_snapshot(top)
        .await?
        .is_some_and(|s| s.kind == SnapshotKind::Committed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_to_the_cluster_registry_only() {
        let token = converge_watch::BearerToken::new("0123456789abcdef-token").expect("token");
        let puller = ImagePuller::new("http://127.0.0.1:5000")
            .and_then(|p| p.with_registry("other.example:5000", "http://127.0.0.1:5001"))
            .and_then(|p| p.with_access(Some(&token), None))
            .expect("puller");
        let ours = ImageReference::parse("cluster.local:5000/demo:v1").expect("ref");
        let theirs = ImageReference::parse("other.example:5000/demo:v1").expect("ref");
        let header = puller
            .auth_for(&ours)
            .expect("token for the cluster registry");
        assert!(header.is_sensitive());
        assert_eq!(header, "Bearer 0123456789abcdef-token");
        assert!(
            puller.auth_for(&theirs).is_none(),
            "token leaked to another registry"
        );
    }
}
