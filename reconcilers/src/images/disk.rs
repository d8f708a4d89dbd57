//! Disk usage of the filesystem holding containerd's root, behind a trait so tests can simulate pressure.

use std::path::PathBuf;

/// Usage of one filesystem, in `df`'s terms: `capacity_bytes` is what non-root users can
/// fill (used + available), so percentages match `df`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskStats {
    /// Bytes in use.
    pub used_bytes: u64,
    /// Used plus available bytes.
    pub capacity_bytes: u64,
}

impl DiskStats {
    /// Used share in percent (0 for an empty filesystem).
    pub fn used_percent(&self) -> f64 {
        if self.capacity_bytes == 0 {
            return 0.0;
        }
        self.used_bytes as f64 * 100.0 / self.capacity_bytes as f64
    }

    /// Bytes in use when the filesystem is at `percent` full.
    pub fn bytes_at_percent(&self, percent: f64) -> u64 {
        (self.capacity_bytes as f64 * percent / 100.0) as u64
    }
}

/// Why disk usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `statvfs` failed.
    #[error("statvfs {path}")]
    Statvfs {
        /// The path asked about.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
}

/// Reads the usage of the filesystem image GC watches.
pub trait DiskUsage: Send + Sync + 'static {
    /// Current usage; an error when it cannot be read (the pass then skips eviction).
    fn usage(&self) -> Result<DiskStats, DiskError>;
}

/// The real reading, through `statvfs(2)` on a path of the filesystem (containerd's root).
#[derive(Debug, Clone)]
pub struct StatvfsDisk {
    path: PathBuf,
}

impl StatvfsDisk {
    /// Watches the filesystem holding `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl DiskUsage for StatvfsDisk {
    fn usage(&self) -> Result<DiskStats, DiskError> {
        let st = nix::sys::statvfs::statvfs(&self.path).map_err(|source| DiskError::Statvfs {
            path: self.path.clone(),
            source,
        })?;
        let frag = st.fragment_size() as u64;
        let used = (st.blocks() as u64).saturating_sub(st.blocks_free() as u64) * frag;
        let available = st.blocks_available() as u64 * frag;
        Ok(DiskStats {
            used_bytes: used,
            capacity_bytes: used + available,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_reads_a_plausible_usage_of_the_temp_dir() {
        let stats = StatvfsDisk::new(std::env::temp_dir())
            .usage()
            .expect("statvfs");
        assert!(stats.capacity_bytes > 0);
        assert!(stats.used_bytes <= stats.capacity_bytes);
        assert!((0.0..=100.0).contains(&stats.used_percent()));
    }

    #[test]
    fn statvfs_of_a_missing_path_is_a_clear_error() {
        let err = StatvfsDisk::new("/nonexistent/converge-gc").usage();
        assert!(matches!(err, Err(DiskError::Statvfs { .. })));
    }

    #[test]
    fn percentages_follow_df() {
        let s = DiskStats {
            used_bytes: 850,
            capacity_bytes: 1000,
        };
        assert!((s.used_percent() - 85.0).abs() < 1e-9);
        assert_eq!(s.bytes_at_percent(80.0), 800);
    }
}
