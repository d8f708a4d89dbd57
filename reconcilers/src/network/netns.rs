//! Network namespaces pinned as files under `<run-dir>/netns/`, created and entered only from dedicated OS threads.
//!
//! A namespace is pinned by bind-mounting `/proc/thread-self/ns/net` of a short-lived
//! thread that `unshare(CLONE_NEWNET)`ed onto `<run-dir>/netns/<name>`. The tokio worker
//! threads never switch namespaces: every namespace switch happens on a fresh OS thread
//! that exits when its work is done.

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statfs::{NSFS_MAGIC, statfs};
use tokio::sync::oneshot;

/// The longest namespace name accepted (names are file names under the netns dir).
const MAX_NAME_LEN: usize = 64;

/// How many stacked mounts `delete` peels off one path before giving up.
const MAX_UNMOUNTS: usize = 8;

/// Errors from creating, entering, deleting or listing pinned network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is empty, too long, or has characters other than `[A-Za-z0-9._-]`.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A filesystem operation on the netns directory or a pin file failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A namespace or mount system call failed.
    #[error("{action} {path}")]
    Sys {
        /// What was being done.
        action: &'static str,
        /// The pin file involved.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The path exists but is not a pinned network namespace (nothing was changed).
    #[error("{path} is not a pinned network namespace")]
    NotANamespace {
        /// The path that was checked.
        path: PathBuf,
    },
    /// The dedicated namespace thread could not be started or died before answering.
    #[error("network namespace thread for {path}: {reason}")]
    Thread {
        /// The pin file involved.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The directory of pinned network namespaces, `<run-dir>/netns`.
///
/// Creating and deleting are serialised within the process so that two callers never
/// stack two mounts on one pin file.
#[derive(Debug, Clone)]
pub struct NetnsDir {
    dir: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl NetnsDir {
    /// The netns directory under `run_dir`; nothing is created until [`NetnsDir::create`].
    pub fn new(run_dir: &Path) -> Self {
        Self {
            dir: run_dir.join("netns"),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// The directory holding the pin files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pin file path for `name`; fails with [`NetnsError::InvalidName`] for a name that
    /// is not a plain file name.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, NetnsError> {
        validate_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Creates the namespace `name` pinned at `<dir>/<name>` and returns that path.
    ///
    /// Idempotent: an existing pin is kept as is; a leftover empty pin file (a crash
    /// between creating the file and mounting onto it) is mounted over. On failure nothing
    /// new is left behind.
    pub async fn create(&self, name: &str) -> Result<PathBuf, NetnsError> {
        Ok(self.pin(name).await?.path)
    }

    /// Like [`NetnsDir::create`], and also says whether this call made the namespace
    /// ([`Pinned::created`]): a namespace made just now is empty but for `lo`, which lets
    /// the caller skip looking inside it. Fails like [`NetnsDir::create`].
    pub async fn pin(&self, name: &str) -> Result<Pinned, NetnsError> {
        let path = self.path_of(name)?;
        let dir = self.dir.clone();
        let lock = Arc::clone(&self.lock);
        let target = path.clone();
        let created = on_dedicated_thread(&path, move || {
            let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            create_pinned(&dir, &target)
        })
        .await??;
        if created {
            tracing::debug!(netns = %path.display(), "network namespace pinned");
        }
        Ok(Pinned { path, created })
    }

    /// Unmounts and removes the pin of `name`; returns whether anything was there.
    ///
    /// Idempotent: a missing file or a file that is no longer a mount point is fine.
    /// Processes still inside the namespace keep it alive until they exit.
    pub async fn delete(&self, name: &str) -> Result<bool, NetnsError> {
        let path = self.path_of(name)?;
        let lock = Arc::clone(&self.lock);
        let target = path.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            delete_pinned(&target)
        })
        .await
        .map_err(|e| NetnsError::Thread {
            path: path.clone(),
            reason: e.to_string(),
        })??;
        if removed {
            tracing::debug!(netns = %path.display(), "network namespace unpinned");
        }
        Ok(removed)
    }

    /// The names of all pin files in the directory (for the orphan sweep), sorted; an
    /// absent directory means none.
    pub fn list(&self) -> Result<Vec<String>, NetnsError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_err("reading", &self.dir, source)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_err("reading", &self.dir, source))?;
            if let Some(name) = entry.file_name().to_str()
                && validate_name(name).is_ok()
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// A pinned namespace as [`NetnsDir::pin`] left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The pin file containers and [`run_in_netns`] use.
    pub path: PathBuf,
    /// Whether this call created the namespace (`false`: it was pinned already).
    pub created: bool,
}

/// Whether `path` is a pinned network namespace (a mount of nsfs).
pub fn is_pinned(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

/// Runs `work` on a fresh OS thread that has entered the namespace pinned at `path`, on a
/// single-threaded tokio runtime of its own, and returns its output.
///
/// Netlink sockets opened inside `work` belong to that namespace. The calling thread
/// never changes namespace. Fails with [`NetnsError::NotANamespace`] if `path` is not a
/// pinned namespace, and with [`NetnsError::Thread`] if the thread cannot run `work`.
pub async fn run_in_netns<F, Fut, T>(path: &Path, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let target = path.to_path_buf();
    let thread_path = target.clone();
    on_dedicated_thread(path, move || {
        enter(&thread_path)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| NetnsError::Thread {
                path: thread_path.clone(),
                reason: format!("building its runtime: {e}"),
            })?;
        Ok(runtime.block_on(work()))
    })
    .await
    .and_then(|inner| inner)
    .inspect_err(|e| tracing::debug!(netns = %target.display(), error = %e, "netns work failed"))
}

/// Switches the current thread into the namespace pinned at `path`.
fn enter(path: &Path) -> Result<(), NetnsError> {
    if !is_pinned(path) {
        return Err(NetnsError::NotANamespace {
            path: path.to_path_buf(),
        });
    }
    let file = fs::File::open(path).map_err(|source| io_err("opening", path, source))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
        action: "entering network namespace",
        path: path.to_path_buf(),
        source,
    })
}

/// Runs `work` on a new OS thread (which exits afterwards) and waits for it without
/// blocking the async caller.
async fn on_dedicated_thread<F, T>(path: &Path, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("converge-netns".to_string())
        .spawn(move || {
            // The receiver only disappears if the caller was cancelled; nothing to report.
            let _ = tx.send(work());
        })
        .map_err(|e| NetnsError::Thread {
            path: path.to_path_buf(),
            reason: format!("spawning: {e}"),
        })?;
    rx.await.map_err(|_| NetnsError::Thread {
        path: path.to_path_buf(),
        reason: "it ended without an answer (panicked)".to_string(),
    })
}

/// Creates the pin on the current (dedicated, short-lived) thread; returns whether it made
/// a new namespace (`false`: one was pinned there already).
fn create_pinned(dir: &Path, path: &Path) -> Result<bool, NetnsError> {
    if is_pinned(path) {
        return Ok(false);
    }
    fs::create_dir_all(dir).map_err(|source| io_err("creating", dir, source))?;
    let existed = path.exists();
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(path)
        .map_err(|source| io_err("creating pin file", path, source))?;
    let pinned = unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|source| NetnsError::Sys {
            action: "unsharing a new network namespace for",
            path: path.to_path_buf(),
            source,
        })
        .and_then(|()| {
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NetnsError::Sys {
                action: "bind-mounting a new network namespace onto",
                path: path.to_path_buf(),
                source,
            })
        });
    if pinned.is_err() && !existed {
        // Best effort: leave no empty pin file behind; `delete` would remove it anyway.
        let _ = fs::remove_file(path);
    }
    pinned.map(|()| true)
}

/// Unmounts every mount stacked on `path` and removes the file.
fn delete_pinned(path: &Path) -> Result<bool, NetnsError> {
    let mut removed = false;
    for _ in 0..MAX_UNMOUNTS {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => removed = true,
            // EINVAL: not a mount point (any more); ENOENT: no file at all.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            // With MNT_DETACH the kernel should not answer EBUSY; if it does, try again.
            Err(Errno::EBUSY) => continue,
            Err(source) => {
                return Err(NetnsError::Sys {
                    action: "unmounting network namespace",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    if is_pinned(path) {
        return Err(NetnsError::Sys {
            action: "unmounting network namespace (still mounted)",
            path: path.to_path_buf(),
            source: Errno::EBUSY,
        });
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(removed),
        Err(source) => Err(io_err("removing pin file", path, source)),
    }
}

fn validate_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 64 bytes")
    } else if name.starts_with('.') {
        Some("starts with a dot")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only [A-Za-z0-9._-] allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> NetnsError {
    NetnsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_or_dots_are_rejected() {
        let dir = NetnsDir::new(Path::new("/nonexistent"));
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(65)] {
            assert!(dir.path_of(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            dir.path_of("cv0123456789ab").expect("valid"),
            Path::new("/nonexistent/netns/cv0123456789ab")
        );
    }

    #[test]
    fn listing_a_missing_directory_finds_nothing() {
        let dir = NetnsDir::new(Path::new("/nonexistent-converge-run"));
        assert!(dir.list().expect("list").is_empty());
    }
}
