//! The artifact store on disk: content-addressed blobs, per-repository manifest links and tags,
//! and in-progress uploads. Every write is atomic (temp file, fsync, rename, fsync dir).
//!
//! Layout under the root:
//! ```text
//! blobs/sha256/<hex>                         every blob, manifests included
//! repositories/<name>/_manifests/<hex>       empty marker: the manifest belongs to the repository
//! repositories/<name>/_tags/<tag>            the digest the tag points to
//! uploads/<uuid>/data, uploads/<uuid>/started  an upload in progress and its start (unix seconds)
//! ```
//! `_manifests` and `_tags` cannot be repository name components (a component starts with
//! `[a-z0-9]`), so no repository can shadow another's metadata.

mod repos;
mod sweep;
mod uploads;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::fs;
use tokio::io::AsyncWriteExt;

use super::names::{Digest, NameError, RepoName};

pub use sweep::{LinkIndex, SweepError, SweptBlob};
pub use uploads::{UploadId, UploadInfo};

/// Largest manifest the store reads into memory.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Failures of artifact store operations.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactStoreError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Uploaded content does not hash to the digest the client named.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// What the client named.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// No upload with this id is in progress.
    #[error("upload {0} is unknown")]
    UploadUnknown(String),
    /// A chunk did not start where the upload currently ends.
    #[error("chunk starts at {got} but the upload has {expected} bytes")]
    RangeInvalid {
        /// Current size of the upload.
        expected: u64,
        /// Where the chunk claimed to start.
        got: u64,
    },
    /// The body length disagrees with the declared size.
    #[error("declared {declared} bytes but received {received}")]
    SizeMismatch {
        /// Size the client declared.
        declared: u64,
        /// Bytes actually received.
        received: u64,
    },
    /// A body stream failed while being received.
    #[error("receiving body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A manifest is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest {0} is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge(Digest),
    /// A stored manifest cannot be parsed.
    #[error("manifest {digest} is malformed: {message}")]
    BadManifest {
        /// The manifest.
        digest: Digest,
        /// What is wrong.
        message: String,
    },
    /// A file name in the store is not a valid digest/tag (someone wrote into the store by hand).
    #[error("unexpected entry in the store: {0}")]
    Corrupt(#[from] NameError),
}

type Result<T, E = ArtifactStoreError> = std::result::Result<T, E>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactStoreError + use<> {
    let path = path.to_path_buf();
    move |source| ArtifactStoreError::Io { op, path, source }
}

/// Size and modification time of one stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// The on-disk artifact store. Cheap to clone; clones share the same directory and locks.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    upload_locks: Arc<Mutex<uploads::LockMap>>,
}

impl ArtifactStore {
    /// Opens (creating if needed) the store rooted at `root`. Fails if the directories
    /// cannot be created.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["blobs/sha256", "repositories", "uploads"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).await.map_err(io("create", &p))?;
        }
        Ok(Self {
            root,
            upload_locks: Arc::default(),
        })
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        self.root.join("repositories").join(repo.as_str())
    }

    /// Size and mtime of a blob, or `None` if it is not stored.
    pub async fn blob_info(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let path = self.blob_path(digest);
        match fs::metadata(&path).await {
            Ok(m) => Ok(Some(BlobInfo {
                digest: digest.clone(),
                size: m.len(),
                modified: m.modified().map_err(io("stat", &path))?,
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("stat", &path)(e)),
        }
    }

    /// Opens a blob for streaming with its size, or `None` if it is not stored.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<(fs::File, u64)>> {
        let path = self.blob_path(digest);
        match fs::File::open(&path).await {
            Ok(f) => {
                let len = f.metadata().await.map_err(io("stat", &path))?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("open", &path)(e)),
        }
    }

    /// Reads a whole manifest (any blob up to [`MAX_MANIFEST_BYTES`]) into memory; `None` if
    /// it is not stored, [`ArtifactStoreError::TooLarge`] if it is bigger.
    pub async fn read_manifest(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        match self.blob_info(digest).await? {
            None => Ok(None),
            Some(info) if info.size > MAX_MANIFEST_BYTES => {
                Err(ArtifactStoreError::TooLarge(digest.clone()))
            }
            Some(_) => {
                let path = self.blob_path(digest);
                match fs::read(&path).await {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io("read", &path)(e)),
                }
            }
        }
    }

    /// Stores `bytes` as a blob (atomically) and returns its digest. Idempotent: a blob that
    /// is already stored is not rewritten but [touched](Self::touch_blob), so blob GC keeps
    /// it as if it had just been written.
    pub async fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if !self.touch_blob(&digest).await? {
            write_atomic(&self.blob_path(&digest), bytes).await?;
        }
        Ok(digest)
    }

    /// Sets a stored blob's mtime to now, so a blob GC pass that planned to sweep it (it
    /// re-checks the mtime right before unlinking) keeps it, and it is younger than the grace
    /// for the next pass. The registry calls this whenever it vouches for an existing blob to
    /// a client (blob `HEAD`, an upload or mount of content already stored, every blob a
    /// pushed manifest references). Returns `false`, changing nothing, when no regular file
    /// is stored under that digest (absent, or a symlink, which is never followed); fails
    /// when the file cannot be opened or its mtime cannot be set.
    pub async fn touch_blob(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || touch_regular_file(&path))
            .await
            .map_err(|e| ArtifactStoreError::Io {
                op: "touch",
                path: self.blob_path(digest),
                source: std::io::Error::other(e),
            })?
    }

    /// Every stored blob with its size and mtime (for blob GC). Temp files are skipped.
    pub async fn list_blobs(&self) -> Result<Vec<BlobInfo>> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        let mut rd = fs::read_dir(&dir).await.map_err(io("list", &dir))?;
        while let Some(entry) = rd.next_entry().await.map_err(io("list", &dir))? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(digest) = Digest::from_hex(&name) else {
                continue;
            };
            match entry.metadata().await {
                Ok(m) => out.push(BlobInfo {
                    digest,
                    size: m.len(),
                    modified: m.modified().map_err(io("stat", &entry.path()))?,
                }),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("stat", &entry.path())(e)),
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Deletes a blob; returns whether it existed. Does not touch tags or manifest links.
    pub async fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path).await {
            Ok(()) => {
                sync_dir(path.parent().unwrap_or(&self.root)).await?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("delete", &path)(e)),
        }
    }
}

async fn list_names(dir: &Path) -> Result<Vec<String>> {
    let mut rd = match fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut out = Vec::new();
    while let Some(entry) = rd.next_entry().await.map_err(io("list", dir))? {
        if let Some(n) = entry.file_name().to_str()
            && !n.starts_with('.')
        {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

async fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path).await {
        Ok(()) => {
            if let Some(parent) = path.parent() {
                sync_dir(parent).await?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("delete", path)(e)),
    }
}

/// Sets the mtime of the regular file at `path` to now, without following a symlink;
/// `Ok(false)` when there is no regular file there.
fn touch_regular_file(path: &Path) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        // O_NOFOLLOW on a symlink.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Ok(false),
        Err(e) => return Err(io("open", path)(e)),
    };
    if !file.metadata().map_err(io("stat", path))?.is_file() {
        return Ok(false);
    }
    let times = std::fs::FileTimes::new().set_modified(SystemTime::now());
    file.set_times(times).map_err(io("touch", path))?;
    Ok(true)
}

/// fsyncs a directory so a rename or removal inside it is durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).await.map_err(io("open dir", dir))?;
    f.sync_all().await.map_err(io("fsync dir", dir))
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename,
/// fsync of the directory. Creates the parent directories.
async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| ArtifactStoreError::Io {
        op: "write",
        path: path.to_path_buf(),
        source: std::io::Error::new(ErrorKind::InvalidInput, "path has no parent"),
    })?;
    fs::create_dir_all(dir).await.map_err(io("create", dir))?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        let mut f = fs::File::create(&tmp).await.map_err(io("create", &tmp))?;
        f.write_all(bytes).await.map_err(io("write", &tmp))?;
        f.sync_all().await.map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, path).await.map_err(io("rename", path))?;
        sync_dir(dir).await
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(&tmp).await;
    }
    result
}

/// Moves a finished file into place: fsync it, rename, fsync the target directory.
async fn commit_file(file: &Path, target: &Path) -> Result<()> {
    let f = fs::File::open(file).await.map_err(io("open", file))?;
    f.sync_all().await.map_err(io("fsync", file))?;
    fs::rename(file, target)
        .await
        .map_err(io("rename", target))?;
    sync_dir(target.parent().unwrap_or(Path::new("/"))).await
}
