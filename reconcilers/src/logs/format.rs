//! The CRI log record, `<RFC3339Nano time> <stdout|stderr|converge> <F|P> <text>`, and the
//! splitting of a byte stream into such records.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};

/// Longest text of one record; longer lines are split into `P` records (as kubelet does).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
    /// converge itself (lifecycle events, driver notices).
    Converge,
}

impl Stream {
    /// The name written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Converge => "converge",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stream {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            "converge" => Ok(Stream::Converge),
            other => Err(FormatError::Stream(other.to_string())),
        }
    }
}

/// Whether a record ends a line (`F`) or is a piece of a longer one (`P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The record's text ends a line.
    Full,
    /// The line continues in the next record of the same stream.
    Partial,
}

impl Tag {
    /// The letter written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Full => "F",
            Tag::Partial => "P",
        }
    }
}

/// Why a line is not a log record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer than the three fields before the text.
    #[error("not a log record (want `<time> <stream> <F|P> <text>`): {0:?}")]
    Shape(String),
    /// The time is not RFC 3339.
    #[error("bad record time {time:?}")]
    Time {
        /// The field as found.
        time: String,
        /// chrono's complaint.
        #[source]
        source: chrono::ParseError,
    },
    /// Not stdout, stderr or converge.
    #[error("unknown stream {0:?}")]
    Stream(String),
    /// Not F or P.
    #[error("unknown tag {0:?} (want F or P)")]
    Tag(String),
}

/// One log record. `text` never contains a newline: [`Record::encode`] replaces line breaks
/// with spaces so one record is always one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the line was read (or the event happened).
    pub time: DateTime<Utc>,
    /// Which stream.
    pub stream: Stream,
    /// Full line or piece.
    pub tag: Tag,
    /// The text, without the line break.
    pub text: String,
}

impl Record {
    /// A full-line record at `time`.
    pub fn full(time: DateTime<Utc>, stream: Stream, text: impl Into<String>) -> Record {
        Record {
            time,
            stream,
            tag: Tag::Full,
            text: text.into(),
        }
    }

    /// The record as one line, newline included, ready for a single `write` call.
    pub fn encode(&self) -> Vec<u8> {
        let text: String = self
            .text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        format!(
            "{} {} {} {}\n",
            self.time.to_rfc3339_opts(SecondsFormat::Nanos, true),
            self.stream,
            self.tag.as_str(),
            text
        )
        .into_bytes()
    }

    /// Parses one line (with or without its newline). Fails, naming the problem, on
    /// anything that is not a record; never panics.
    pub fn parse(line: &str) -> Result<Record, FormatError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let mut parts = line.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(FormatError::Shape(line.to_string()));
        };
        let text = parts.next().unwrap_or("");
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|source| FormatError::Time {
                time: time.to_string(),
                source,
            })?
            .with_timezone(&Utc);
        let stream = stream.parse()?;
        let tag = match tag {
            "F" => Tag::Full,
            "P" => Tag::Partial,
            other => return Err(FormatError::Tag(other.to_string())),
        };
        Ok(Record {
            time,
            stream,
            tag,
            text: text.to_string(),
        })
    }
}

/// Cuts a byte stream into line texts of at most `max` bytes: complete lines come out
/// [`Tag::Full`] (without their `\n`), pieces of longer lines [`Tag::Partial`]. Bytes are
/// decoded lossily, so non-UTF-8 output never fails. A piece never splits a UTF-8 sequence
/// when it can be avoided.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter emitting texts of at most `max` bytes (at least 4, so a UTF-8 character
    /// always fits).
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(4),
        }
    }

    /// Feeds `bytes`; returns the texts they complete, in order. Holds at most `max` bytes
    /// of an unfinished line between calls.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(Tag, String)> {
        let mut out = Vec::new();
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            let mut body = body;
            while self.buf.len() + body.len() > self.max {
                let room = self.max - self.buf.len();
                let cut = utf8_boundary(body, room);
                // A buffer already full of an incomplete character still has to move on.
                let cut = if cut == 0 && self.buf.is_empty() {
                    room
                } else {
                    cut
                };
                self.buf.extend_from_slice(&body[..cut]);
                body = &body[cut..];
                out.push((Tag::Partial, self.take()));
            }
            self.buf.extend_from_slice(body);
            if ends {
                out.push((Tag::Full, self.take()));
            }
        }
        out
    }

    /// The unfinished line left at end of stream, as a full line (the stream ended it).
    pub fn finish(&mut self) -> Option<(Tag, String)> {
        (!self.buf.is_empty()).then(|| (Tag::Full, self.take()))
    }

    fn take(&mut self) -> String {
        let bytes = std::mem::take(&mut self.buf);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The largest `n <= room` such that `bytes[..n]` does not end inside a UTF-8 sequence
/// (for valid UTF-8; other bytes are cut anywhere).
fn utf8_boundary(bytes: &[u8], room: usize) -> usize {
    let room = room.min(bytes.len());
    if room == bytes.len() {
        return room;
    }
    // Step back over continuation bytes (at most 3) to the start of the character at `room`.
    let mut n = room;
    while n > 0 && room - n < 4 && (bytes[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    if room - n >= 4 { room } else { n }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_record_encodes_as_one_cri_line_and_parses_back() {
        let r = Record::full(
            at("2026-01-02T03:04:05.123456789Z"),
            Stream::Stderr,
            "oops: x y",
        );
        let line = String::from_utf8(r.encode()).expect("utf8");
        assert_eq!(line, "2026-01-02T03:04:05.123456789Z stderr F oops: x y\n");
        assert_eq!(Record::parse(&line).expect("parse"), r);
    }

    #[test]
    fn line_breaks_inside_text_never_split_a_record() {
        let r = Record::full(at("2026-01-02T03:04:05Z"), Stream::Converge, "a\nb\rc");
        let line = String::from_utf8(r.encode()).expect("utf8");
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(Record::parse(&line).expect("parse").text, "a b c");
    }

    #[test]
    fn empty_text_and_partial_tags_round_trip() {
        let mut r = Record::full(at("2026-01-02T03:04:05Z"), Stream::Stdout, "");
        r.tag = Tag::Partial;
        let line = String::from_utf8(r.encode()).expect("utf8");
        assert_eq!(Record::parse(&line).expect("parse"), r);
    }

    #[test]
    fn malformed_lines_are_refused_with_the_reason() {
        assert!(matches!(Record::parse("hello"), Err(FormatError::Shape(_))));
        assert!(matches!(
            Record::parse("yesterday stdout F x"),
            Err(FormatError::Time { .. })
        ));
        assert!(matches!(
            Record::parse("2026-01-02T03:04:05Z stdin F x"),
            Err(FormatError::Stream(_))
        ));
        assert!(matches!(
            Record::parse("2026-01-02T03:04:05Z stdout X x"),
            Err(FormatError::Tag(_))
        ));
    }

    #[test]
    fn splitter_holds_unfinished_lines_until_their_newline() {
        let mut s = LineSplitter::new(100);
        assert!(s.push(b"hel").is_empty());
        assert_eq!(s.push(b"lo\nwor"), vec![(Tag::Full, "hello".to_string())]);
        assert_eq!(
            s.push(b"ld\n\n"),
            vec![(Tag::Full, "world".to_string()), (Tag::Full, String::new())]
        );
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splitter_cuts_long_lines_into_partial_records() {
        let mut s = LineSplitter::new(4);
        assert_eq!(
            s.push(b"abcdefghij\n"),
            vec![
                (Tag::Partial, "abcd".to_string()),
                (Tag::Partial, "efgh".to_string()),
                (Tag::Full, "ij".to_string())
            ]
        );
    }

    #[test]
    fn splitter_never_cuts_inside_a_utf8_character() {
        let mut s = LineSplitter::new(4);
        // "aéé": a (1) + é (2) + é (2) = 5 bytes; the cut must fall before the second é.
        let out = s.push("aéé\n".as_bytes());
        assert_eq!(
            out,
            vec![
                (Tag::Partial, "aé".to_string()),
                (Tag::Full, "é".to_string())
            ]
        );
    }

    #[test]
    fn splitter_decodes_invalid_utf8_lossily() {
        let mut s = LineSplitter::new(100);
        let out = s.push(b"a\xffb\n");
        assert_eq!(out, vec![(Tag::Full, "a\u{fffd}b".to_string())]);
    }

    #[test]
    fn splitter_ends_a_stream_without_final_newline_as_a_full_line() {
        let mut s = LineSplitter::new(100);
        assert!(s.push(b"tail").is_empty());
        assert_eq!(s.finish(), Some((Tag::Full, "tail".to_string())));
    }
}
