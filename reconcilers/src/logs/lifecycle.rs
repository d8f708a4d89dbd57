//! Lifecycle events (created, started, exited with code or OOM-killed, restarted, running
//! with ports ready, stopped, failed because ...) recorded by the controller as `converge`
//! records in `<sandbox_dir>/_events.log`.
//!
//! Events go to their own file rather than into the containers' files so the controller
//! never races the log driver's writes or rotation; readers merge them by time.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::LogError;
use super::format::{Record, Stream};
use super::reader::LogReader;
use super::writer::{LogWriter, RotationPolicy};

/// The events file in a sandbox's log directory.
pub const EVENTS_FILE: &str = "_events.log";

/// Events files are small: 1 MiB, 2 files.
const EVENTS_POLICY: RotationPolicy = RotationPolicy {
    max_size: 1024 * 1024,
    max_files: 2,
};

/// One lifecycle event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// When it was recorded.
    pub time: DateTime<Utc>,
    /// The container's name, or the sandbox's for sandbox-wide events.
    pub subject: String,
    /// What happened.
    pub message: String,
}

impl LifecycleEvent {
    /// The event in a `converge` record: text `<subject> <message>`.
    pub fn to_record(&self) -> Record {
        Record::full(
            self.time,
            Stream::Converge,
            format!("{} {}", self.subject, self.message),
        )
    }

    /// The event a `converge` record holds; `None` for other streams.
    pub fn from_record(record: &Record) -> Option<LifecycleEvent> {
        if record.stream != Stream::Converge {
            return None;
        }
        let (subject, message) = record.text.split_once(' ').unwrap_or((&record.text, ""));
        Some(LifecycleEvent {
            time: record.time,
            subject: subject.to_string(),
            message: message.to_string(),
        })
    }
}

/// Writes and reads a sandbox's lifecycle events. Calls do blocking file I/O of one small
/// record; they are cheap enough to make from async code.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleLog;

impl LifecycleLog {
    /// The events file of `sandbox_dir`.
    pub fn path(sandbox_dir: &Path) -> PathBuf {
        sandbox_dir.join(EVENTS_FILE)
    }

    /// Appends `event` about `subject` (a container name, or the sandbox name for
    /// sandbox-wide events), stamped now, creating the directory if needed. Whitespace in
    /// `subject` becomes `_` and line breaks in `event` become spaces. Fails when the file
    /// cannot be written; nothing is written then.
    pub fn record(sandbox_dir: &Path, subject: &str, event: &str) -> Result<(), LogError> {
        Self::record_at(sandbox_dir, subject, event, Utc::now())
    }

    /// [`LifecycleLog::record`] with an explicit time (for tests and replays).
    pub fn record_at(
        sandbox_dir: &Path,
        subject: &str,
        event: &str,
        time: DateTime<Utc>,
    ) -> Result<(), LogError> {
        let subject: String = subject
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        let subject = if subject.is_empty() {
            "-".to_string()
        } else {
            subject
        };
        let event = LifecycleEvent {
            time,
            subject,
            message: event.to_string(),
        };
        let mut writer = LogWriter::open(Self::path(sandbox_dir), EVENTS_POLICY)?;
        writer.append(&event.to_record())
    }

    /// The last `n` events of the sandbox, oldest first; none when it has no events file.
    /// Fails when the file exists but cannot be read.
    pub fn recent_events(sandbox_dir: &Path, n: usize) -> Result<Vec<LifecycleEvent>, LogError> {
        let tail = LogReader::new(Self::path(sandbox_dir)).tail(Some(n))?;
        Ok(tail
            .records
            .iter()
            .filter_map(LifecycleEvent::from_record)
            .collect())
    }
}
