//! Listening sockets for the entity server: a private unix socket (mode 0600 before anyone
//! can connect, stale files cleaned up) or a TCP port.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use converge_watch::ServerAddress;
use tokio::net::{TcpListener, UnixListener};

/// Why the server could not listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A server already answers on the socket path.
    #[error("{} is in use: another server answers on it", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket sits at the path; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A filesystem or socket call failed.
    #[error("cannot listen on {address}: {action}")]
    Io {
        /// The address being set up.
        address: String,
        /// What was being done.
        action: &'static str,
        /// The system's complaint.
        #[source]
        source: io::Error,
    },
}

/// A bound listener, ready to accept.
#[derive(Debug)]
pub enum Bound {
    /// A unix socket at `path` (removed again by [`Bound::cleanup`]).
    Unix {
        /// The listener.
        listener: UnixListener,
        /// Where its socket file lives.
        path: PathBuf,
    },
    /// A TCP listener.
    Tcp(TcpListener),
}

impl Bound {
    /// Removes the socket file of a unix listener (after the listener is gone); a missing
    /// file is fine, other failures are logged.
    pub fn cleanup(path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove socket file")
            }
        }
    }
}

/// Binds `address`. For `unix:PATH`: creates the parent directory, removes a stale socket
/// file only if nothing answers on it, and publishes the socket at `PATH` already with
/// mode 0600 (it is bound in a private directory, restricted, then moved into place).
/// Must be called inside a tokio runtime.
pub async fn bind(address: &ServerAddress) -> Result<Bound, ListenError> {
    match address {
        ServerAddress::Tcp(host_port) => {
            let listener = TcpListener::bind(host_port.as_str())
                .await
                .map_err(|source| ListenError::Io {
                    address: address.to_string(),
                    action: "bind",
                    source,
                })?;
            Ok(Bound::Tcp(listener))
        }
        ServerAddress::Unix(path) => {
            let path = path.clone();
            let listener = bind_unix(&path)?;
            Ok(Bound::Unix { listener, path })
        }
    }
}

fn bind_unix(path: &Path) -> Result<UnixListener, ListenError> {
    let io_err = |action: &'static str| {
        move |source| ListenError::Io {
            address: format!("unix:{}", path.display()),
            action,
            source,
        }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err("create the parent directory"))?;
    remove_stale(path)?;

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let private = parent.join(format!(
        ".converge-bind.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io_err("create a private directory"))?;
    let staged = private.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&staged).map_err(io_err("bind"))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("set the socket mode to 0600"))?;
        std::fs::rename(&staged, path).map_err(io_err("move the socket into place"))?;
        Ok(listener)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    if let Err(e) = std::fs::remove_dir(&private) {
        tracing::warn!(path = %private.display(), error = %e, "cannot remove private bind directory");
    }
    result
}

/// Removes `path` if it is a socket nobody answers on; refuses if a server answers or if
/// it is not a socket.
fn remove_stale(path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::Io {
                address: format!("unix:{}", path.display()),
                action: "inspect the existing socket path",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => {
            return Err(ListenError::InUse {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::Io {
                address: format!("unix:{}", path.display()),
                action: "check whether a server answers on the existing socket",
                source,
            });
        }
    }
    tracing::info!(path = %path.display(), "removing stale socket");
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ListenError::Io {
            address: format!("unix:{}", path.display()),
            action: "remove the stale socket",
            source,
        }),
    }
}
