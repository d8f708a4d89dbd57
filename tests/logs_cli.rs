//! `converge logs` on prepared log directories (merge by time, events, follow) and
//! `describe`'s events section.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use converge::cli::describe::describe_with_events;
use converge_reconcilers::logs::{
    LifecycleEvent, LifecycleLog, LogWriter, Record, RotationPolicy, Stream,
};
use converge_testkit::unique_name;
use converge_watch::{Entity, EntityId, Kind};

fn converge() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_converge"))
}

fn t(s: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-29T06:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
        + TimeDelta::seconds(s)
}

fn append(dir: &Path, container: &str, records: &[(i64, Stream, &str)]) {
    let mut w = LogWriter::open(
        dir.join(format!("{container}.log")),
        RotationPolicy::default(),
    )
    .expect("open");
    for (s, stream, text) in records {
        w.append(&Record::full(t(*s), *stream, *text))
            .expect("append");
    }
}

/// A data dir with sandbox `name`: containers `app` and `db` and one event each way.
fn prepared(name: &str) -> (tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().join("logs").join(name);
    append(
        &dir,
        "app",
        &[
            (1, Stream::Stdout, "app one"),
            (4, Stream::Stderr, "app two"),
        ],
    );
    append(
        &dir,
        "db",
        &[(2, Stream::Stdout, "db one"), (5, Stream::Stdout, "db two")],
    );
    LifecycleLog::record_at(&dir, "db", "started", t(0)).expect("event");
    LifecycleLog::record_at(&dir, name, "ready", t(3)).expect("event");
    (data, dir)
}

fn logs(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(converge())
        .arg("logs")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn logs_merges_containers_and_events_by_time_with_container_prefixes() {
    let name = unique_name("web");
    let (data, _dir) = prepared(&name);
    let (ok, out, err) = logs(data.path(), &[&name]);
    assert!(ok, "{err}");
    let want = [
        "[db] converge: started".to_string(),
        "[app] app one".to_string(),
        "[db] db one".to_string(),
        format!("[{name}] converge: ready"),
        "[app] app two".to_string(),
        "[db] db two".to_string(),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}

#[test]
fn logs_of_one_container_shows_its_events_and_the_sandboxs_without_prefix() {
    let name = unique_name("web");
    let (data, _dir) = prepared(&name);
    let (ok, out, err) = logs(
        data.path(),
        &[&format!("sandbox/{name}"), "--container", "app"],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["app one", "converge: ready", "app two"]
    );
    let (ok, out, err) = logs(
        data.path(),
        &[&name, "--container", "app", "--tail", "1", "--timestamps"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "2026-11-29T06:00:04.000000000Z app two\n");
}

#[test]
fn logs_refuses_ids_that_are_not_sandboxes_and_prints_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    for (id, want) in [
        ("artifact/web", "not a sandbox"),
        ("Not_A_Name", "not a sandbox name"),
        ("web", "no logs for sandbox/web"),
    ] {
        let (ok, out, err) = logs(data.path(), &[id]);
        assert!(!ok, "{id}");
        assert!(out.is_empty(), "{id}: {out}");
        assert!(err.contains(want), "{id}: {err}");
    }
}

#[test]
fn logs_follow_prints_records_written_later_until_stopped() {
    let name = unique_name("web");
    let (data, dir) = prepared(&name);
    let mut child = Command::new(converge())
        .args([
            "logs",
            &name,
            "-f",
            "--container",
            "app",
            "--tail",
            "1",
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a line in time")
    };
    assert_eq!(next(), "app two");
    append(&dir, "app", &[(6, Stream::Stdout, "app three")]);
    assert_eq!(next(), "app three");
    LifecycleLog::record_at(&dir, "app", "exited with code 0", t(7)).expect("event");
    assert_eq!(next(), "converge: exited with code 0");
    child.kill().expect("kill the follower we started");
    child.wait().expect("reap");
    reader.join().expect("reader thread");
}

#[test]
fn describe_lists_recent_events_oldest_first() {
    let id = EntityId::new(Kind::Sandbox, "web").expect("id");
    let entity = Entity::new(id, serde_json::json!({"containers": []}));
    let events = [
        LifecycleEvent {
            time: t(0),
            subject: "app".into(),
            message: "started".into(),
        },
        LifecycleEvent {
            time: t(9),
            subject: "app".into(),
            message: "exited with code 1".into(),
        },
    ];
    let text = describe_with_events(&entity, &events, t(10)).expect("describe");
    let section = text.split("Events:\n").nth(1).expect("events section");
    assert_eq!(
        section,
        "  2026-11-29T06:00:00Z  app  started\n  2026-11-29T06:00:09Z  app  exited with code 1\n"
    );
}
