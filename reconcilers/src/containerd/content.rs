//! The content store: streamed, resumable, digest-checked blob writes; blob info, labels and reads.

use std::collections::HashMap;

use containerd_client::services::v1::{
    DeleteContentRequest, Info, InfoRequest, ReadContentRequest, StatusRequest, UpdateRequest,
    WriteAction, WriteContentRequest, WriteContentResponse,
};
use futures::StreamExt;
use prost_types::FieldMask;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::client::ContainerdClient;
use super::error::{ContainerdError, StatusContext, found, ignore_not_found};

/// Bytes per `Write` message (well under gRPC's 16 MiB default).
const CHUNK: usize = 1024 * 1024;
/// Largest blob [`ContainerdClient::read_content`] returns (manifests, configs, indexes).
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// A content-addressed blob reference, as in OCI descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// OCI or Docker media type.
    pub media_type: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    pub(crate) fn to_proto(&self) -> containerd_client::types::Descriptor {
        containerd_client::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: i64::try_from(self.size).unwrap_or(i64::MAX),
            annotations: HashMap::new(),
        }
    }

    pub(crate) fn from_proto(d: containerd_client::types::Descriptor) -> Self {
        Descriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: u64::try_from(d.size).unwrap_or(0),
        }
    }
}

/// What the content store knows about one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentInfo {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Labels (gc references, `containerd.io/uncompressed`, ...).
    pub labels: HashMap<String, String>,
}

impl From<Info> for ContentInfo {
    fn from(info: Info) -> Self {
        ContentInfo {
            digest: info.digest,
            size: u64::try_from(info.size).unwrap_or(0),
            labels: info.labels,
        }
    }
}

/// True when `digest` is `sha256:` followed by 64 lowercase hex digits (the only form
/// converge accepts, so digests are also safe as path components).
pub fn is_valid_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn check_digest(op: &str, digest: &str) -> Result<(), ContainerdError> {
    if is_valid_sha256_digest(digest) {
        Ok(())
    } else {
        Err(ContainerdError::invalid(
            op,
            format!("{digest:?} is not a sha256 digest"),
        ))
    }
}

impl ContainerdClient {
    /// Info of blob `digest`, or `None` when the store does not have it.
    pub async fn content_info(&self, digest: &str) -> Result<Option<ContentInfo>, ContainerdError> {
        let op = format!("content info {digest}");
        check_digest(&op, digest)?;
        let result = self
            .content()
            .info(self.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
            .op(|| op.clone());
        Ok(found(result)?
            .and_then(|r| r.into_inner().info)
            .map(ContentInfo::from))
    }

    /// Sets (adds or replaces) `labels` on blob `digest`, keeping its other labels.
    /// Fails with `NotFound` when the blob is missing.
    pub async fn set_content_labels(
        &self,
        digest: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let op = format!("label content {digest}");
        check_digest(&op, digest)?;
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.request(UpdateRequest {
                info: Some(Info {
                    digest: digest.to_string(),
                    labels: labels.clone(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask { paths }),
            }))
            .await
            .op(|| op.clone())?;
        Ok(())
    }

    /// Reads the whole blob `digest` (at most [`MAX_READ_BYTES`]) and checks its digest.
    pub async fn read_content(&self, digest: &str) -> Result<Vec<u8>, ContainerdError> {
        let op = format!("read content {digest}");
        check_digest(&op, digest)?;
        let mut stream = self
            .content()
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .op(|| op.clone())?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.op(|| op.clone())?;
            data.extend_from_slice(&chunk.data);
            if data.len() as u64 > MAX_READ_BYTES {
                return Err(ContainerdError::bad_data(
                    op,
                    "blob larger than the read limit",
                ));
            }
        }
        if sha256_digest(&data) != digest {
            return Err(ContainerdError::bad_data(
                op,
                "content does not match its digest",
            ));
        }
        Ok(data)
    }

    /// Deletes blob `digest`; a missing blob is fine.
    pub async fn delete_content(&self, digest: &str) -> Result<(), ContainerdError> {
        let op = format!("delete content {digest}");
        check_digest(&op, digest)?;
        ignore_not_found(
            self.content()
                .delete(self.request(DeleteContentRequest {
                    digest: digest.to_string(),
                }))
                .await
                .map(|_| ())
                .op(|| op.clone()),
        )
    }

    /// Bytes containerd holds of an interrupted [`Self::write_content`] of `digest`, or
    /// `None` when no write of it is in progress.
    pub async fn ingest_offset(&self, digest: &str) -> Result<Option<u64>, ContainerdError> {
        let op = format!("ingest status {digest}");
        check_digest(&op, digest)?;
        let resp = found(
            self.content()
                .status(self.request(StatusRequest {
                    r#ref: ingest_ref(digest),
                }))
                .await
                .op(|| op.clone()),
        )?;
        Ok(resp
            .and_then(|r| r.into_inner().status)
            .map(|s| u64::try_from(s.offset).unwrap_or(0)))
    }

    /// Writes blob `desc` from `reader` into the content store with `labels`, under `lease`
    /// when given. Idempotent: a blob already present only gets `labels` set. Resumes an
    /// interrupted write of the same ref (`converge-<digest>`), skipping what containerd has.
    /// containerd checks size and digest on commit: a mismatch fails (`FailedPrecondition`)
    /// and commits nothing. `reader` must yield exactly `desc.size` bytes.
    pub async fn write_content<R>(
        &self,
        desc: &Descriptor,
        mut reader: R,
        labels: &HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<ContentInfo, ContainerdError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let digest = desc.digest.as_str();
        let op = format!("write content {digest}");
        check_digest(&op, digest)?;
        if let Some(info) = self.content_info(digest).await? {
            self.set_content_labels(digest, labels).await?;
            return Ok(info);
        }
        let total = i64::try_from(desc.size)
            .map_err(|_| ContainerdError::invalid(op.clone(), "size out of range"))?;
        let reference = ingest_ref(digest);
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let outgoing =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let send = |msg: WriteContentRequest| {
            let tx = tx.clone();
            let op = op.clone();
            async move {
                tx.send(msg)
                    .await
                    .map_err(|_| ContainerdError::Unavailable {
                        operation: op,
                        message: "write stream closed".to_string(),
                    })
            }
        };
        // The first message opens the writer: ref, expected size and digest.
        send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.clone(),
            total,
            expected: digest.to_string(),
            ..Default::default()
        })
        .await?;
        let result = self
            .content()
            .write(self.leased_request(outgoing, lease)?)
            .await;
        let mut responses = match result {
            Ok(resp) => resp.into_inner(),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                self.set_content_labels(digest, labels).await?;
                return self
                    .content_info(digest)
                    .await?
                    .ok_or_else(|| ContainerdError::bad_data(op, "blob vanished after write"));
            }
            Err(status) => return Err(ContainerdError::from_status(op, status)),
        };
        let stat = match next_response(&op, &mut responses).await {
            Ok(stat) => stat,
            Err(e) if e.is_already_exists() => {
                self.set_content_labels(digest, labels).await?;
                return self
                    .content_info(digest)
                    .await?
                    .ok_or_else(|| ContainerdError::bad_data(op, "blob vanished after write"));
            }
            Err(e) => return Err(e),
        };
        // Resume: skip what containerd already holds for this ref.
        let mut offset = if stat.offset > 0 && stat.offset <= total {
            stat.offset
        } else {
            0
        };
        if offset > 0 {
            let skip = u64::try_from(offset).unwrap_or(0);
            let skipped = tokio::io::copy(&mut (&mut reader).take(skip), &mut tokio::io::sink())
                .await
                .map_err(|e| ContainerdError::Source {
                    operation: op.clone(),
                    source: Box::new(e),
                })?;
            if skipped != skip {
                return Err(ContainerdError::bad_data(
                    op,
                    format!("source ended at {skipped} bytes while resuming at {offset}"),
                ));
            }
            tracing::debug!(digest, offset, "resuming content write");
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n =
                read_full(&mut reader, &mut buf)
                    .await
                    .map_err(|e| ContainerdError::Source {
                        operation: op.clone(),
                        source: Box::new(e),
                    })?;
            if n == 0 {
                break;
            }
            if offset + n as i64 > total {
                return Err(ContainerdError::bad_data(
                    op,
                    format!("source yields more than {total} bytes"),
                ));
            }
            send(WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: buf[..n].to_vec(),
                ..Default::default()
            })
            .await?;
            let ack = next_response(&op, &mut responses).await?;
            offset = ack.offset;
        }
        if offset != total {
            return Err(ContainerdError::bad_data(
                op,
                format!("source yielded {offset} bytes, expected {total}"),
            ));
        }
        send(WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset,
            total,
            expected: digest.to_string(),
            labels: labels.clone(),
            ..Default::default()
        })
        .await?;
        match next_response(&op, &mut responses).await {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => self.set_content_labels(digest, labels).await?,
            Err(e) => return Err(e),
        }
        drop(tx);
        Ok(ContentInfo {
            digest: digest.to_string(),
            size: desc.size,
            labels: labels.clone(),
        })
    }
}

/// The ingest ref converge writes blob `digest` under (stable, so writes can resume).
fn ingest_ref(digest: &str) -> String {
    format!("converge-{digest}")
}

/// The next response of a write stream; a closed stream is an error.
async fn next_response(
    op: &str,
    responses: &mut tonic::Streaming<WriteContentResponse>,
) -> Result<WriteContentResponse, ContainerdError> {
    match responses.message().await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(ContainerdError::bad_data(op, "write stream ended early")),
        Err(status) => Err(ContainerdError::from_status(op, status)),
    }
}

/// Fills `buf` as far as the reader allows; returns the bytes read (0 only at the end).
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_sha256_digests_are_accepted() {
        assert!(is_valid_sha256_digest(&sha256_digest(b"x")));
        assert!(!is_valid_sha256_digest("sha256:../../etc/passwd"));
        assert!(!is_valid_sha256_digest("md5:abc"));
        assert!(!is_valid_sha256_digest(&format!(
            "sha256:{}",
            "A".repeat(64)
        )));
    }
}
