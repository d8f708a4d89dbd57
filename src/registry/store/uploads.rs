//! Blob uploads in progress: `uploads/<uuid>/data` grows chunk by chunk and becomes
//! `blobs/sha256/<hex>` once its digest is verified; `uploads/<uuid>/started` keeps its
//! start time so blob GC can leave young uploads alone.

use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ArtifactStore, ArtifactStoreError, BlobInfo, Result, commit_file, io, write_atomic};
use crate::registry::names::Digest;

pub(super) type LockMap = HashMap<UploadId, Arc<tokio::sync::Mutex<()>>>;

/// The id of an upload session: a UUID, so it is safe as a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(uuid::Uuid);

impl FromStr for UploadId {
    type Err = ArtifactStoreError;
    /// Accepts only a UUID; anything else is [`ArtifactStoreError::UploadUnknown`].
    fn from_str(s: &str) -> Result<Self> {
        uuid::Uuid::parse_str(s)
            .map(UploadId)
            .map_err(|_| ArtifactStoreError::UploadUnknown(s.to_string()))
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The state of one upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// Its id.
    pub id: UploadId,
    /// Bytes received so far.
    pub size: u64,
    /// When it was started.
    pub started: SystemTime,
}

impl ArtifactStore {
    fn upload_dir(&self, id: UploadId) -> std::path::PathBuf {
        self.root().join("uploads").join(id.to_string())
    }

    fn upload_lock(&self, id: UploadId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.upload_locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id).or_default().clone()
    }

    fn forget_lock(&self, id: UploadId) {
        let mut map = self.upload_locks.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&id);
    }

    /// Starts an upload session and returns its id.
    pub async fn start_upload(&self) -> Result<UploadId> {
        let id = UploadId(uuid::Uuid::new_v4());
        let dir = self.upload_dir(id);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        write_atomic(&dir.join("started"), now.to_string().as_bytes()).await?;
        let data = dir.join("data");
        fs::File::create(&data).await.map_err(io("create", &data))?;
        Ok(id)
    }

    /// Size and start time of an upload, or `None` if it is unknown.
    pub async fn upload_info(&self, id: UploadId) -> Result<Option<UploadInfo>> {
        let dir = self.upload_dir(id);
        let started = match fs::read_to_string(dir.join("started")).await {
            Ok(s) => UNIX_EPOCH + Duration::from_secs(s.trim().parse().unwrap_or(0)),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &dir)(e)),
        };
        let data = dir.join("data");
        match fs::metadata(&data).await {
            Ok(m) => Ok(Some(UploadInfo {
                id,
                size: m.len(),
                started,
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("stat", &data)(e)),
        }
    }

    /// Every upload in progress (for blob GC).
    pub async fn list_uploads(&self) -> Result<Vec<UploadInfo>> {
        let mut out = Vec::new();
        for name in super::list_names(&self.root().join("uploads")).await? {
            if let Ok(id) = name.parse()
                && let Some(info) = self.upload_info(id).await?
            {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Appends a chunk to an upload and returns its new size. `start`, when given, must equal
    /// the current size ([`ArtifactStoreError::RangeInvalid`] otherwise); `declared_len`, when
    /// given, must equal the bytes received ([`ArtifactStoreError::SizeMismatch`]). On any
    /// failure the upload is left exactly as it was.
    pub async fn append_upload<S, E>(
        &self,
        id: UploadId,
        start: Option<u64>,
        declared_len: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let lock = self.upload_lock(id);
        let _guard = lock.lock().await;
        let before = self
            .upload_info(id)
            .await?
            .ok_or_else(|| ArtifactStoreError::UploadUnknown(id.to_string()))?
            .size;
        if let Some(start) = start
            && start != before
        {
            return Err(ArtifactStoreError::RangeInvalid {
                expected: before,
                got: start,
            });
        }
        let path = self.upload_dir(id).join("data");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(io("open", &path))?;
        let result = async {
            let mut received = 0u64;
            let mut body = std::pin::pin!(body);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ArtifactStoreError::Body(e.into()))?;
                file.write_all(&chunk).await.map_err(io("write", &path))?;
                received += chunk.len() as u64;
            }
            file.flush().await.map_err(io("write", &path))?;
            if let Some(declared) = declared_len
                && declared != received
            {
                return Err(ArtifactStoreError::SizeMismatch { declared, received });
            }
            Ok(before + received)
        }
        .await;
        if result.is_err() {
            file.set_len(before).await.map_err(io("truncate", &path))?;
        }
        result
    }

    /// Verifies that the whole upload hashes to `expected` and moves it into the blob store;
    /// when that blob is already stored it is [touched](ArtifactStore::touch_blob) instead
    /// (blob GC then keeps it). The upload is removed either way; on mismatch nothing is
    /// stored.
    pub async fn finish_upload(&self, id: UploadId, expected: &Digest) -> Result<BlobInfo> {
        let lock = self.upload_lock(id);
        let guard = lock.lock().await;
        let dir = self.upload_dir(id);
        let data = dir.join("data");
        let mut file = match fs::File::open(&data).await {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ArtifactStoreError::UploadUnknown(id.to_string()));
            }
            Err(e) => return Err(io("open", &data)(e)),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).await.map_err(io("read", &data))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        drop(file);
        let actual = Digest::from_hasher(hasher);
        let result = if &actual != expected {
            Err(ArtifactStoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            })
        } else {
            let target = self.blob_path(expected);
            // Content already stored: vouch for it (fresh mtime) instead of rewriting it.
            if !self.touch_blob(expected).await? {
                commit_file(&data, &target).await?;
            }
            match self.blob_info(expected).await? {
                Some(info) => Ok(info),
                None => Err(ArtifactStoreError::Io {
                    op: "stat",
                    path: target,
                    source: std::io::Error::new(ErrorKind::NotFound, "blob vanished after commit"),
                }),
            }
        };
        let _ = fs::remove_dir_all(&dir).await;
        drop(guard);
        self.forget_lock(id);
        result
    }

    /// Cancels an upload; returns whether it existed.
    pub async fn cancel_upload(&self, id: UploadId) -> Result<bool> {
        let lock = self.upload_lock(id);
        let guard = lock.lock().await;
        let dir = self.upload_dir(id);
        let existed = match fs::remove_dir_all(&dir).await {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(io("delete", &dir)(e)),
        };
        drop(guard);
        self.forget_lock(id);
        Ok(existed)
    }
}
