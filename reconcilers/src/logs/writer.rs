//! `LogWriter`: appends whole records to a log file and rotates it by size, keeping a
//! bounded number of files (`x.log`, `x.log.1`, ... oldest last).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::LogError;
use super::format::Record;

/// When to rotate and how many files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate before a write that would take the current file past this many bytes.
    pub max_size: u64,
    /// Files kept in all, the current one included (so `max_files - 1` rotated ones).
    pub max_files: u32,
}

impl Default for RotationPolicy {
    /// 10 MiB per file, 3 files.
    fn default() -> Self {
        RotationPolicy {
            max_size: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

impl RotationPolicy {
    /// Checks the policy can work: fails on a zero size or zero files.
    pub fn validate(&self) -> Result<(), LogError> {
        if self.max_size == 0 {
            return Err(LogError::Policy("max-size must be at least 1 byte".into()));
        }
        if self.max_files == 0 {
            return Err(LogError::Policy("max-files must be at least 1".into()));
        }
        Ok(())
    }
}

/// `<path>.<n>`: the n-th rotated file of `path` (1 is the most recent).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Appends records to one log file. Every record goes out in a single `write` on an
/// `O_APPEND` descriptor, so records from other appenders never interleave inside a line.
/// Not shareable across threads by itself; wrap it in a mutex.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    policy: RotationPolicy,
    file: Option<File>,
    size: u64,
}

impl LogWriter {
    /// Opens (creating it and its directory if needed) `path` for appending. Fails on an
    /// invalid policy or when the file cannot be opened; nothing is created then.
    pub fn open(path: impl Into<PathBuf>, policy: RotationPolicy) -> Result<LogWriter, LogError> {
        policy.validate()?;
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(LogError::io("create directory", dir))?;
        }
        let mut w = LogWriter {
            path,
            policy,
            file: None,
            size: 0,
        };
        w.reopen()?;
        Ok(w)
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record`, rotating first when it would take the file past `max_size` (a
    /// record larger than `max_size` still goes into a fresh file whole). On failure the
    /// record is not written (or written partially on a full disk) and the next call
    /// retries opening the file.
    pub fn append(&mut self, record: &Record) -> Result<(), LogError> {
        self.append_bytes(&record.encode())
    }

    fn append_bytes(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        let len = bytes.len() as u64;
        if self.file.is_none() {
            self.reopen()?;
        }
        if self.size > 0 && self.size + len > self.policy.max_size {
            self.rotate()?;
        }
        let file = match self.file.as_mut() {
            Some(f) => f,
            None => {
                self.reopen()?;
                self.file
                    .as_mut()
                    .ok_or_else(|| LogError::Policy("log file vanished".into()))?
            }
        };
        match file.write_all(bytes) {
            Ok(()) => {
                self.size += len;
                Ok(())
            }
            Err(e) => {
                // Re-learn the size (and the file) next time.
                self.file = None;
                Err(LogError::Io {
                    action: "append to",
                    path: self.path.clone(),
                    source: e,
                })
            }
        }
    }

    /// Shifts `x.log.(n)` to `x.log.(n+1)` dropping the oldest, moves `x.log` to `x.log.1`
    /// and starts an empty `x.log`.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.file = None;
        let keep = self.policy.max_files - 1;
        if keep == 0 {
            remove_if_exists(&self.path)?;
        } else {
            for n in (1..keep).rev() {
                rename_if_exists(
                    &rotated_path(&self.path, n),
                    &rotated_path(&self.path, n + 1),
                )?;
            }
            rename_if_exists(&self.path, &rotated_path(&self.path, 1))?;
        }
        self.reopen()
    }

    fn reopen(&mut self) -> Result<(), LogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(LogError::io("open", &self.path))?;
        self.size = file
            .metadata()
            .map_err(LogError::io("stat", &self.path))?
            .len();
        self.file = Some(file);
        Ok(())
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), LogError> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LogError::Io {
            action: "rename",
            path: from.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LogError::Io {
            action: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}
