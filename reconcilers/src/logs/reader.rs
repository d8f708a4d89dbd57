//! `LogReader`: the records of one log and its rotated files, oldest first (`tail`), and a
//! live follow that notices rotation (`follow`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream as FuturesStream;

use super::LogError;
use super::format::{Record, Stream, Tag};
use super::writer::rotated_path;

/// Most bytes one follow step reads before handing out records (keeps memory bounded).
const FOLLOW_CHUNK: usize = 256 * 1024;
/// Rotated files looked for at most.
const MAX_ROTATED: u32 = 1000;

/// Where a follow starts: a file (by inode) and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    inode: Option<u64>,
    offset: u64,
}

/// The last records of a log, and where to follow from to see only what comes after.
#[derive(Debug, Clone)]
pub struct Tail {
    /// Oldest first.
    pub records: Vec<Record>,
    /// The end of what `records` covers.
    pub cursor: Cursor,
}

/// Reads one log (`x.log` and its `x.log.N` rotations).
#[derive(Debug, Clone)]
pub struct LogReader {
    path: PathBuf,
}

impl LogReader {
    /// A reader of `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> LogReader {
        LogReader { path: path.into() }
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The existing files of this log, oldest first (`x.log.N`, ..., `x.log.1`, `x.log`).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = (1..=MAX_ROTATED)
            .map(|n| rotated_path(&self.path, n))
            .take_while(|p| p.exists())
            .collect();
        files.reverse();
        if self.path.exists() {
            files.push(self.path.clone());
        }
        files
    }

    /// The last `n` records (all with `None`) across the rotated files and the current one,
    /// oldest first. Lines that are not records (e.g. raw output from before converge used
    /// the log driver) come back as stdout records stamped with the previous record's time.
    /// An unfinished last line is left for `follow`. Fails when a file cannot be read; a
    /// log with no files yields no records.
    pub fn tail(&self, n: Option<usize>) -> Result<Tail, LogError> {
        let mut records = VecDeque::new();
        let mut cursor = Cursor::default();
        let mut last_time = DateTime::<Utc>::UNIX_EPOCH;
        for path in self.files() {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(LogError::io("open", &path)(e)),
            };
            let inode = file.metadata().map_err(LogError::io("stat", &path))?.ino();
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(LogError::io("read", &path))?;
            let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in bytes[..complete].split(|b| *b == b'\n') {
                if line.is_empty() {
                    continue;
                }
                let record = lenient(line, last_time);
                last_time = record.time;
                records.push_back(record);
                if n.is_some_and(|n| records.len() > n) {
                    records.pop_front();
                }
            }
            cursor = Cursor {
                inode: Some(inode),
                offset: complete as u64,
            };
        }
        if n == Some(0) {
            records.clear();
        }
        Ok(Tail {
            records: records.into(),
            cursor,
        })
    }

    /// Where the log ends now: following from here yields only records written later.
    pub fn end(&self) -> Cursor {
        match std::fs::metadata(&self.path) {
            Ok(m) => Cursor {
                inode: Some(m.ino()),
                offset: m.len(),
            },
            Err(_) => Cursor::default(),
        }
    }

    /// Records appended after `from`, as they come, checking every `poll`. Notices
    /// rotation: the rotated file is read to its end before the new one is read from its
    /// start (a file rotated twice within one `poll` is missed). Never ends by itself;
    /// yields an error (and goes on trying) when a file cannot be read. Holds at most one
    /// chunk of records in memory.
    pub fn follow(
        &self,
        from: Cursor,
        poll: Duration,
    ) -> impl FuturesStream<Item = Result<Record, LogError>> + Send + 'static {
        let state = Follow {
            path: self.path.clone(),
            start: Some(from),
            file: None,
            inode: None,
            partial: Vec::new(),
            chunk: Vec::new(),
            pending: VecDeque::new(),
            last_time: DateTime::<Utc>::UNIX_EPOCH,
            interval: None,
            poll,
        };
        futures::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(r) = s.pending.pop_front() {
                    return Some((r, s));
                }
                if !s.step() {
                    let poll = s.poll;
                    let interval = s.interval.get_or_insert_with(|| {
                        let mut i = tokio::time::interval(poll);
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        i
                    });
                    interval.tick().await;
                }
            }
        })
    }
}

struct Follow {
    path: PathBuf,
    start: Option<Cursor>,
    file: Option<File>,
    inode: Option<u64>,
    partial: Vec<u8>,
    /// The read buffer, allocated on first use and reused.
    chunk: Vec<u8>,
    pending: VecDeque<Result<Record, LogError>>,
    last_time: DateTime<Utc>,
    interval: Option<tokio::time::Interval>,
    poll: Duration,
}

impl Follow {
    /// One step: reads what is new. False when there was nothing to read.
    fn step(&mut self) -> bool {
        if self.file.is_none() && !self.open_start() {
            return false;
        }
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        self.chunk.resize(FOLLOW_CHUNK, 0);
        match file.read(&mut self.chunk) {
            Ok(0) => self.check_rotation(),
            Ok(n) => {
                self.partial.extend_from_slice(&self.chunk[..n]);
                if let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') {
                    let rest = self.partial.split_off(end + 1);
                    let lines = std::mem::replace(&mut self.partial, rest);
                    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        let record = lenient(line, self.last_time);
                        self.last_time = record.time;
                        self.pending.push_back(Ok(record));
                    }
                }
                true
            }
            Err(e) => {
                self.file = None;
                self.pending
                    .push_back(Err(LogError::io("read", &self.path)(e)));
                true
            }
        }
    }

    /// Opens the file to read: at first the cursor's file (the current one, or the
    /// rotated file that now holds it), later the current file from its start.
    fn open_start(&mut self) -> bool {
        let start = self.start.take();
        let wanted = start.and_then(|c| c.inode.map(|i| (i, c.offset)));
        if let Some((inode, offset)) = wanted {
            let candidates = std::iter::once(self.path.clone()).chain(
                (1..=MAX_ROTATED)
                    .map(|n| rotated_path(&self.path, n))
                    .take_while(|p| p.exists()),
            );
            for path in candidates {
                if let Ok(mut f) = File::open(&path)
                    && f.metadata().is_ok_and(|m| m.ino() == inode)
                    && f.seek(SeekFrom::Start(offset)).is_ok()
                {
                    self.file = Some(f);
                    self.inode = Some(inode);
                    return true;
                }
            }
        }
        match File::open(&self.path) {
            Ok(f) => {
                self.inode = f.metadata().ok().map(|m| m.ino());
                // A log that did not exist at the cursor is read from its start.
                self.file = Some(f);
                true
            }
            Err(_) => false,
        }
    }

    /// At the end of the open file: switch to the current file when it is another one.
    fn check_rotation(&mut self) -> bool {
        let current = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if current.is_some() && current != self.inode {
            self.file = None;
            self.partial.clear();
            true
        } else {
            false
        }
    }
}

/// `line` as a record, or as raw stdout text stamped `fallback` when it is not one.
fn lenient(line: &[u8], fallback: DateTime<Utc>) -> Record {
    let text = String::from_utf8_lossy(line);
    Record::parse(&text).unwrap_or_else(|_| Record {
        time: fallback,
        stream: Stream::Stdout,
        tag: Tag::Full,
        text: text.into_owned(),
    })
}
