//! `converge log-driver CONFIG` (hidden): the containerd binary logger converge points task
//! stdio at. The shim starts it with the container's stdout on fd 3, stderr on fd 4 and a
//! ready pipe on fd 5, and env `CONTAINER_ID`/`CONTAINER_NAMESPACE`; `CONFIG` is a
//! [`DriverConfig`] query. It appends CRI records to `<dir>/<name>.log`, rotating by size,
//! and exits when both streams reach end of file (the shim closes its ends when the task
//! is deleted).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use converge_reconcilers::logs::{
    DriverConfig, DriverConfigError, LineSplitter, LogError, LogWriter, Record, Stream, Tag,
};

/// The container's stdout, as the shim passes it.
const STDOUT_FD: i32 = 3;
/// The container's stderr.
const STDERR_FD: i32 = 4;
/// Written to (or closed) once the driver is ready; the shim waits on it.
const READY_FD: i32 = 5;
/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Arguments of the hidden `converge log-driver`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogDriverArgs {
    /// The configuration: `dir=...&name=...&max-size=...&max-files=...&max-line=...`.
    pub config: String,
}

/// Why the log driver could not run.
#[derive(Debug, thiserror::Error)]
pub enum LogDriverError {
    /// The configuration is refused.
    #[error("bad log-driver configuration")]
    Config(#[source] DriverConfigError),
    /// The log file cannot be opened at start.
    #[error("cannot open the container log")]
    Open(#[source] LogError),
    /// A stdio descriptor from the shim is missing.
    #[error("cannot open fd {fd} from the shim")]
    Fd {
        /// The descriptor.
        fd: i32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What the driver did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverReport {
    /// Records written.
    pub written: u64,
    /// Records dropped because they could not be written (full disk, ...).
    pub dropped: u64,
}

/// Runs the driver as the shim starts it: parses the configuration, opens the log,
/// signals ready on fd 5 and copies fds 3 and 4 until both reach end of file. Blocking.
/// Fails before signalling on a bad configuration, a log that cannot be opened or missing
/// descriptors; the shim then sees end of file on the ready pipe and goes on, and the
/// container's output is lost.
pub fn run(args: &LogDriverArgs) -> Result<DriverReport, LogDriverError> {
    let container_id = std::env::var("CONTAINER_ID").ok();
    let config = DriverConfig::from_query(&args.config, container_id.as_deref())
        .map_err(LogDriverError::Config)?;
    let writer = LogWriter::open(config.path(), config.policy).map_err(LogDriverError::Open)?;
    let stdout = open_fd(STDOUT_FD, false)?;
    let stderr = open_fd(STDERR_FD, false)?;
    signal_ready();
    Ok(pump(writer, config.max_line, stdout, stderr))
}

/// Opens `/proc/self/fd/<fd>`: a second descriptor on the same pipe, without `unsafe`.
fn open_fd(fd: i32, write: bool) -> Result<File, LogDriverError> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open(Path::new("/proc/self/fd").join(fd.to_string()))
        .map_err(|source| LogDriverError::Fd { fd, source })
}

/// Tells the shim the driver is ready: one byte on fd 5 (absent when run by hand).
fn signal_ready() {
    if let Ok(mut ready) = open_fd(READY_FD, true) {
        let _ = ready.write_all(b"1");
    }
}

/// Copies `stdout` and `stderr` into `writer` as records, one thread per stream, until
/// both end. A record that cannot be written is dropped and counted (reading never stops,
/// so the container never blocks on a full disk); once writing works again a `converge`
/// record says how many were lost.
pub fn pump(
    writer: LogWriter,
    max_line: usize,
    stdout: impl Read + Send + 'static,
    stderr: impl Read + Send + 'static,
) -> DriverReport {
    let sink = Arc::new(Mutex::new(Sink {
        writer,
        report: DriverReport::default(),
        unreported: 0,
    }));
    let sources: [(Stream, Box<dyn Read + Send>); 2] = [
        (Stream::Stdout, Box::new(stdout)),
        (Stream::Stderr, Box::new(stderr)),
    ];
    let threads: Vec<_> = sources
        .into_iter()
        .map(|(stream, source)| {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || copy(stream, source, max_line, &sink))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    match sink.lock() {
        Ok(s) => s.report,
        Err(poisoned) => poisoned.into_inner().report,
    }
}

struct Sink {
    writer: LogWriter,
    report: DriverReport,
    unreported: u64,
}

impl Sink {
    fn write(&mut self, record: &Record) {
        if self.unreported > 0 {
            let notice = Record::full(
                Utc::now(),
                Stream::Converge,
                format!(
                    "log-driver dropped {} records it could not write",
                    self.unreported
                ),
            );
            if self.writer.append(&notice).is_ok() {
                self.unreported = 0;
            }
        }
        match self.writer.append(record) {
            Ok(()) => self.report.written += 1,
            Err(_) => {
                self.report.dropped += 1;
                self.unreported += 1;
            }
        }
    }
}

fn copy(stream: Stream, mut source: Box<dyn Read + Send>, max_line: usize, sink: &Mutex<Sink>) {
    let mut splitter = LineSplitter::new(max_line);
    let mut buf = vec![0u8; READ_CHUNK];
    let emit = |lines: Vec<(Tag, String)>| {
        if lines.is_empty() {
            return;
        }
        let time = Utc::now();
        let mut sink = match sink.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (tag, text) in lines {
            sink.write(&Record {
                time,
                stream,
                tag,
                text,
            });
        }
    };
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => emit(splitter.push(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    emit(splitter.finish().into_iter().collect());
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_reconcilers::logs::RotationPolicy;

    #[test]
    fn a_full_disk_drops_records_and_counts_them_without_blocking() {
        let writer =
            LogWriter::open("/dev/full", RotationPolicy::default()).expect("open /dev/full");
        let out: &[u8] = b"one\ntwo\n";
        let err: &[u8] = b"three\n";
        let report = pump(writer, 100, out, err);
        assert_eq!(
            report,
            DriverReport {
                written: 0,
                dropped: 3
            }
        );
    }

    #[test]
    fn both_streams_are_copied_as_records_until_both_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let writer = LogWriter::open(&path, RotationPolicy::default()).expect("open");
        let out: &[u8] = b"hello\nworld";
        let err: &[u8] = b"oops\n";
        let report = pump(writer, 100, out, err);
        assert_eq!(
            report,
            DriverReport {
                written: 3,
                dropped: 0
            }
        );
        let text = std::fs::read_to_string(&path).expect("read");
        let records: Vec<Record> = text
            .lines()
            .map(|l| Record::parse(l).expect("record"))
            .collect();
        let of = |s: Stream| {
            records
                .iter()
                .filter(|r| r.stream == s)
                .map(|r| r.text.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(of(Stream::Stdout), vec!["hello", "world"]);
        assert_eq!(of(Stream::Stderr), vec!["oops"]);
    }

    #[test]
    fn long_lines_become_partial_records_of_at_most_max_line_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let writer = LogWriter::open(&path, RotationPolicy::default()).expect("open");
        let out: Vec<u8> = [b"x".repeat(25), b"\n".to_vec()].concat();
        pump(writer, 10, std::io::Cursor::new(out), std::io::empty());
        let text = std::fs::read_to_string(&path).expect("read");
        let tags: Vec<(Tag, usize)> = text
            .lines()
            .map(|l| Record::parse(l).expect("record"))
            .map(|r| (r.tag, r.text.len()))
            .collect();
        assert_eq!(
            tags,
            vec![(Tag::Partial, 10), (Tag::Partial, 10), (Tag::Full, 5)]
        );
    }
}
