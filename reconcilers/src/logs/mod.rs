//! Container logs on disk: the CRI record format, a size-rotating writer, a reader with
//! tail and follow across rotations, and converge's own lifecycle events.
//!
//! Layout: `<sandbox_dir>/<container>.log` (written by the `converge log-driver` that the
//! containerd shim runs for each task), rotated to `<container>.log.1`, `.log.2`, ...; and
//! `<sandbox_dir>/_events.log` for lifecycle events written by the controller. Container
//! names are DNS labels, so `_events` never collides with one.

pub mod driver;
pub mod format;
pub mod lifecycle;
pub mod reader;
pub mod writer;

use std::path::PathBuf;

pub use driver::{DRIVER_SUBCOMMAND, DriverConfig, DriverConfigError};
pub use format::{FormatError, LineSplitter, MAX_LINE_BYTES, Record, Stream, Tag};
pub use lifecycle::{EVENTS_FILE, LifecycleEvent, LifecycleLog};
pub use reader::{Cursor, LogReader, Tail};
pub use writer::{LogWriter, RotationPolicy, rotated_path};

/// Why reading or writing a log file failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed; `action` says which (`append to`, `rename`, ...).
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A rotation policy that cannot work (zero size or zero files).
    #[error("invalid rotation policy: {0}")]
    Policy(String),
}

impl LogError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io {
            action,
            path,
            source,
        }
    }
}
