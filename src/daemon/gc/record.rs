//! The last-pass record `<data-dir>/gc-last-pass.json`: written atomically after each GC pass, read by `converge describe node`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use converge_reconcilers::engine::{Action, Context, ReconcileError, Reconciler};
use converge_reconcilers::gc_report::{GcKind, LastPass, LastPassBoard};
use serde::{Deserialize, Serialize};

/// Name of the last-pass record in the data directory.
pub const LAST_PASS_FILE: &str = "gc-last-pass.json";

/// Why the last-pass record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum GcRecordError {
    /// Writing or renaming the file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the file failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a last-pass record.
    #[error("{path} is not a GC last-pass record")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The record could not be encoded.
    #[error("cannot encode the GC last-pass record")]
    Encode(#[source] serde_json::Error),
}

/// What `<data-dir>/gc-last-pass.json` holds: the latest pass of each GC kind on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeGcRecord {
    /// The node's id.
    pub node: String,
    /// When the record was written.
    pub updated: DateTime<Utc>,
    /// The latest pass of each kind that has run, ordered orphans, images, blobs.
    pub passes: Vec<LastPass>,
}

/// `<data_dir>/gc-last-pass.json`.
pub fn last_pass_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LAST_PASS_FILE)
}

/// Reads the record at `path`: `Ok(None)` when no daemon has written one yet, an error
/// when it cannot be read or is not a record.
pub fn read_last_passes(path: &Path) -> Result<Option<NodeGcRecord>, GcRecordError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(GcRecordError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| GcRecordError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes the board to one file atomically (temp file in the same directory, then
/// rename), one writer at a time. Cloning is cheap; clones share the lock.
#[derive(Debug, Clone)]
pub struct LastPassFile {
    path: PathBuf,
    node: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl LastPassFile {
    /// A writer of `path` for node `node`.
    pub fn new(path: PathBuf, node: impl Into<String>) -> Self {
        Self {
            path,
            node: node.into(),
            lock: Arc::default(),
        }
    }

    /// Replaces the file with the board's current content. On failure the old file (if
    /// any) stays whole and the error says why.
    pub async fn publish(&self, board: &LastPassBoard) -> Result<(), GcRecordError> {
        let _held = self.lock.lock().await;
        let record = NodeGcRecord {
            node: self.node.clone(),
            updated: Utc::now(),
            passes: board.all(),
        };
        let mut json = serde_json::to_vec_pretty(&record).map_err(GcRecordError::Encode)?;
        json.push(b'\n');
        let tmp = self
            .path
            .with_file_name(format!(".{LAST_PASS_FILE}.tmp-{}", std::process::id()));
        let err = |source| GcRecordError::Write {
            path: self.path.clone(),
            source,
        };
        tokio::fs::write(&tmp, &json).await.map_err(err)?;
        if let Err(e) = tokio::fs::rename(&tmp, &self.path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err(e));
        }
        Ok(())
    }
}

/// A GC reconciler that publishes the board to the last-pass file after each reconcile
/// (pass or failure); a failed write is logged and does not fail the pass.
#[derive(Debug)]
pub struct Publishing<R> {
    inner: R,
    board: LastPassBoard,
    file: LastPassFile,
}

impl<R> Publishing<R> {
    /// Wraps `inner`, which records into `board`.
    pub fn new(inner: R, board: LastPassBoard, file: LastPassFile) -> Self {
        Self { inner, board, file }
    }
}

#[async_trait]
impl<R: Reconciler<Key = GcKind>> Reconciler for Publishing<R> {
    type Key = GcKind;

    async fn reconcile(&self, key: &GcKind, ctx: &Context) -> Result<Action, ReconcileError> {
        let result = self.inner.reconcile(key, ctx).await;
        if let Err(e) = self.file.publish(&self.board).await {
            tracing::warn!(kind = %key, error = %e, "cannot publish the GC last-pass record");
        }
        result
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_reconcilers::gc_report::GcPassReport;

    #[tokio::test]
    async fn the_record_is_written_whole_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = last_pass_path(dir.path());
        assert!(read_last_passes(&path).expect("read").is_none());
        let board = LastPassBoard::default();
        let mut pass = GcPassReport::start(GcKind::Orphans, false);
        pass.summary.deleted = 2;
        board.record(&pass.summary);
        let file = LastPassFile::new(path.clone(), "n1");
        file.publish(&board).await.expect("publish");
        let record = read_last_passes(&path).expect("read").expect("some");
        assert_eq!(record.node, "n1");
        assert_eq!(record.passes, vec![pass.summary]);
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "no temp file stays behind");
    }

    #[test]
    fn a_file_that_is_no_record_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = last_pass_path(dir.path());
        std::fs::write(&path, b"{not json").expect("write");
        let err = read_last_passes(&path).expect_err("refused");
        assert!(err.to_string().contains(LAST_PASS_FILE), "{err}");
    }
}
