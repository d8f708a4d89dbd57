//! Log files: rotation by size, tail across rotated files, follow noticing rotation, and
//! lifecycle events read back for `describe`.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use converge_reconcilers::logs::{
    LifecycleLog, LogReader, LogWriter, Record, RotationPolicy, Stream, Tag, rotated_path,
};
use futures::StreamExt;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-29T06:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

fn record(i: i64, text: &str) -> Record {
    Record::full(t0() + TimeDelta::seconds(i), Stream::Stdout, text)
}

fn texts(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.text.clone()).collect()
}

/// Every record here encodes to the same length, so sizes are easy to reason about.
fn line_len() -> u64 {
    record(0, "line-00").encode().len() as u64
}

fn write_lines(path: &Path, policy: RotationPolicy, range: std::ops::Range<i64>) {
    let mut w = LogWriter::open(path, policy).expect("open");
    for i in range {
        w.append(&record(i, &format!("line-{i:02}")))
            .expect("append");
    }
}

#[test]
fn a_writer_rotates_at_max_size_and_keeps_max_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    let policy = RotationPolicy {
        max_size: 2 * line_len(),
        max_files: 3,
    };
    write_lines(&path, policy, 0..7);
    // 7 lines, 2 per file: app.log.3 would hold lines 0-1 but only 3 files are kept.
    let read = |p: &Path| std::fs::read_to_string(p).expect("read");
    assert_eq!(read(&path).lines().count(), 1);
    assert!(read(&path).contains("line-06"));
    assert!(read(&rotated_path(&path, 1)).contains("line-04"));
    assert!(read(&rotated_path(&path, 2)).contains("line-02"));
    assert!(!rotated_path(&path, 3).exists());
    for p in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
        assert!(std::fs::metadata(&p).expect("stat").len() <= policy.max_size);
    }
}

#[test]
fn a_writer_reopened_after_a_restart_keeps_counting_the_existing_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    let policy = RotationPolicy {
        max_size: 3 * line_len(),
        max_files: 2,
    };
    write_lines(&path, policy, 0..2);
    write_lines(&path, policy, 2..4);
    assert_eq!(
        std::fs::read_to_string(rotated_path(&path, 1))
            .expect("read")
            .lines()
            .count(),
        3
    );
    assert_eq!(
        std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count(),
        1
    );
}

#[test]
fn a_single_file_policy_starts_over_instead_of_keeping_old_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    let policy = RotationPolicy {
        max_size: line_len(),
        max_files: 1,
    };
    write_lines(&path, policy, 0..3);
    assert!(!rotated_path(&path, 1).exists());
    let tail = LogReader::new(&path).tail(None).expect("tail");
    assert_eq!(texts(&tail.records), vec!["line-02"]);
}

#[test]
fn an_unworkable_policy_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub").join("app.log");
    for policy in [
        RotationPolicy {
            max_size: 0,
            max_files: 3,
        },
        RotationPolicy {
            max_size: 10,
            max_files: 0,
        },
    ] {
        assert!(LogWriter::open(&path, policy).is_err());
    }
    assert!(!path.parent().expect("parent").exists());
}

#[test]
fn tail_reads_rotated_files_oldest_first_and_keeps_the_last_n() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    let policy = RotationPolicy {
        max_size: 2 * line_len(),
        max_files: 4,
    };
    write_lines(&path, policy, 0..7);
    let reader = LogReader::new(&path);
    let all = reader.tail(None).expect("tail");
    let want: Vec<String> = (0..7).map(|i| format!("line-{i:02}")).collect();
    assert_eq!(texts(&all.records), want);
    let last3 = reader.tail(Some(3)).expect("tail");
    assert_eq!(texts(&last3.records), want[4..].to_vec());
    assert!(reader.tail(Some(0)).expect("tail").records.is_empty());
}

#[test]
fn tail_of_a_missing_log_is_empty_and_raw_lines_are_kept_as_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        LogReader::new(dir.path().join("none.log"))
            .tail(None)
            .expect("tail")
            .records
            .is_empty()
    );
    let path = dir.path().join("raw.log");
    let mut bytes = record(1, "stamped").encode();
    bytes.extend_from_slice(b"plain output\nunfinished");
    std::fs::write(&path, bytes).expect("write");
    let tail = LogReader::new(&path).tail(None).expect("tail");
    assert_eq!(texts(&tail.records), vec!["stamped", "plain output"]);
    assert_eq!(tail.records[1].time, record(1, "").time);
    assert_eq!(tail.records[1].tag, Tag::Full);
}

#[tokio::test(start_paused = true)]
async fn follow_yields_new_records_and_notices_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    let policy = RotationPolicy {
        max_size: 2 * line_len(),
        max_files: 3,
    };
    write_lines(&path, policy, 0..1);
    let reader = LogReader::new(&path);
    let tail = reader.tail(None).expect("tail");
    let mut follow = Box::pin(reader.follow(tail.cursor, Duration::from_millis(100)));

    // Line 1 fills the file, line 2 rotates it away before the follower looks again:
    // the rotated file is read to its end, then the new file from its start.
    write_lines(&path, policy, 1..3);
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(5), follow.next())
            .await
            .expect("record in time")
            .expect("stream goes on")
            .expect("record");
        got.push(r.text);
    }
    assert_eq!(got, vec!["line-01", "line-02"]);

    // Nothing new: the follower waits (polling) rather than ending.
    let idle = tokio::time::timeout(Duration::from_secs(1), follow.next()).await;
    assert!(idle.is_err(), "no record yet");
    write_lines(&path, policy, 3..4);
    tokio::time::advance(Duration::from_millis(200)).await;
    let r = tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await
        .expect("record in time")
        .expect("stream goes on")
        .expect("record");
    assert_eq!(r.text, "line-03");
}

#[tokio::test(start_paused = true)]
async fn follow_from_the_end_skips_what_was_already_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.log");
    write_lines(&path, RotationPolicy::default(), 0..3);
    let reader = LogReader::new(&path);
    let mut follow = Box::pin(reader.follow(reader.end(), Duration::from_millis(50)));
    write_lines(&path, RotationPolicy::default(), 3..4);
    let r = tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await
        .expect("in time")
        .expect("stream")
        .expect("record");
    assert_eq!(r.text, "line-03");
}

#[test]
fn lifecycle_events_are_recorded_as_converge_records_and_read_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = dir.path().join("web");
    LifecycleLog::record_at(&sandbox, "app", "created", t0()).expect("record");
    LifecycleLog::record_at(
        &sandbox,
        "app",
        "started (pid 42)",
        t0() + TimeDelta::seconds(1),
    )
    .expect("record");
    LifecycleLog::record_at(
        &sandbox,
        "app",
        "exited with code 3\nrestarting",
        t0() + TimeDelta::seconds(2),
    )
    .expect("record");
    LifecycleLog::record(&sandbox, "web", "failed because image missing").expect("record");

    let recent = LifecycleLog::recent_events(&sandbox, 3).expect("events");
    let got: Vec<(String, String)> = recent
        .iter()
        .map(|e| (e.subject.clone(), e.message.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("app".to_string(), "started (pid 42)".to_string()),
            (
                "app".to_string(),
                "exited with code 3 restarting".to_string()
            ),
            (
                "web".to_string(),
                "failed because image missing".to_string()
            ),
        ]
    );
    let raw = std::fs::read_to_string(LifecycleLog::path(&sandbox)).expect("read");
    assert!(
        raw.lines().all(|l| l.split(' ').nth(1) == Some("converge")),
        "{raw}"
    );
}

#[test]
fn a_sandbox_without_events_has_no_recent_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        LifecycleLog::recent_events(&dir.path().join("nothing"), 5)
            .expect("events")
            .is_empty()
    );
}
