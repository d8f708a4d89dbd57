//! The `converge log-driver` binary logger for real: a private containerd's shim runs the
//! built `converge` binary for a task's stdio; records of both streams land, rotate, keep
//! coming after the client disconnects, and `converge logs` prints them.

#[path = "../reconcilers/tests/containerd_support/mod.rs"]
mod containerd_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_support::{Env, sandbox_name};
use converge_reconcilers::containerd::ContainerdClient;
use converge_reconcilers::logs::{
    DriverConfig, LifecycleLog, LogReader, Record, RotationPolicy, Stream, rotated_path,
};

fn converge() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_converge"))
}

/// Polls `check` every 100 ms for up to 20 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn texts(path: &Path) -> Vec<String> {
    LogReader::new(path)
        .tail(None)
        .map(|t| t.records.into_iter().map(|r| r.text).collect())
        .unwrap_or_default()
}

fn converge_logs(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(converge())
        .arg("logs")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run converge logs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_task_logged_through_the_driver_leaves_rotated_timestamped_records_of_both_streams() {
    let (env, image) = Env::with_busybox().await;
    let sandbox = sandbox_name();
    let script = "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo out-$i; echo err-$i >&2; done";
    let id = env.create(&image, &sandbox, &["sh", "-c", script]).await;
    let data_dir: PathBuf = env.ctrd.dir().join("data");
    let dir = data_dir.join("logs").join(&sandbox);
    let mut config = DriverConfig::new(&dir, "app");
    config.policy = RotationPolicy {
        max_size: 1024,
        max_files: 3,
    };
    let io = config.task_io(converge()).expect("driver io");
    env.client.start_task(&id, &io).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(20), env.client.wait_task(&id))
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(exit, 0);

    let log = config.path();
    eventually("the last lines of both streams", || {
        let t = texts(&log);
        t.contains(&"out-40".to_string()) && t.contains(&"err-40".to_string())
    })
    .await;
    // 80 records of ~50 bytes at 1 KiB per file: rotated, with the oldest file dropped.
    assert!(rotated_path(&log, 1).exists());
    assert!(rotated_path(&log, 2).exists());
    assert!(!rotated_path(&log, 3).exists());
    let mut records = Vec::new();
    for p in [rotated_path(&log, 2), rotated_path(&log, 1), log.clone()] {
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(
            text.len() <= 1024,
            "{} is {} bytes",
            p.display(),
            text.len()
        );
        for line in text.lines() {
            records.push(Record::parse(line).expect("every line is a CRI record"));
        }
    }
    for stream in [Stream::Stdout, Stream::Stderr] {
        let of: Vec<&Record> = records.iter().filter(|r| r.stream == stream).collect();
        assert!(of.len() > 10, "{stream}: {}", of.len());
        assert!(
            of.windows(2).all(|w| w[0].time <= w[1].time),
            "{stream} in order"
        );
    }

    LifecycleLog::record(&dir, "app", "exited with code 0").expect("event");
    let (ok, stdout, stderr) = converge_logs(&data_dir, &[&sandbox, "--tail", "3"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[2], "[app] converge: exited with code 0", "{stdout}");
    assert!(
        stdout.contains("[app] out-40") || stdout.contains("[app] err-40"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = converge_logs(
        &data_dir,
        &[
            &format!("sandbox/{sandbox}"),
            "--container",
            "app",
            "--timestamps",
        ],
    );
    assert!(ok, "{stderr}");
    let last_out = stdout
        .lines()
        .find(|l| l.ends_with(" out-40"))
        .expect("out-40");
    let stamp = last_out.split(' ').next().expect("stamp");
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "{last_out}"
    );

    let (ok, _, stderr) = converge_logs(&data_dir, &[&sandbox, "--container", "db"]);
    assert!(
        !ok && stderr.contains("no logs for container \"db\""),
        "{stderr}"
    );
    let (ok, _, stderr) = converge_logs(&data_dir, &["sandbox/never-there"]);
    assert!(
        !ok && stderr.contains("no logs for sandbox/never-there"),
        "{stderr}"
    );

    env.client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn the_driver_keeps_writing_after_the_client_disconnects() {
    let (env, image) = Env::with_busybox().await;
    let sandbox = sandbox_name();
    let script = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done";
    let id = env.create(&image, &sandbox, &["sh", "-c", script]).await;
    let dir = env.ctrd.dir().join("data").join("logs").join(&sandbox);
    let config = DriverConfig::new(&dir, "app");
    let io = config.task_io(converge()).expect("driver io");
    env.client.start_task(&id, &io).await.expect("start");
    let log = config.path();
    eventually("a first tick", || !texts(&log).is_empty()).await;

    let namespace = env.client.namespace().to_string();
    let Env { client, ctrd, .. } = env;
    drop(client);
    let before = texts(&log).len();
    eventually("ticks written with no client connected", || {
        texts(&log).len() >= before + 5
    })
    .await;

    let client = ContainerdClient::new(ctrd.socket(), &namespace)
        .expect("client")
        .with_runc_root(ctrd.runc_root());
    client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
    let settled = texts(&log).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts(&log).len(), settled, "the driver stops with the task");
}

#[tokio::test]
async fn the_driver_keeps_writing_while_containerd_restarts() {
    let (env, image) = Env::with_busybox().await;
    let sandbox = sandbox_name();
    let script = "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done";
    let id = env.create(&image, &sandbox, &["sh", "-c", script]).await;
    let dir = env.ctrd.dir().join("data").join("logs").join(&sandbox);
    let config = DriverConfig::new(&dir, "app");
    let io = config.task_io(converge()).expect("driver io");
    env.client.start_task(&id, &io).await.expect("start");
    let log = config.path();
    eventually("a first tick", || !texts(&log).is_empty()).await;

    let namespace = env.client.namespace().to_string();
    let Env {
        client, mut ctrd, ..
    } = env;
    drop(client);
    ctrd.restart().await.expect("restart containerd");
    let before = texts(&log).len();
    eventually("ticks written after containerd restarted", || {
        texts(&log).len() >= before + 5
    })
    .await;

    let client = ContainerdClient::new(ctrd.socket(), &namespace)
        .expect("client")
        .with_runc_root(ctrd.runc_root());
    client
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("containerd ready");
    client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn long_lines_and_invalid_utf8_from_a_real_task_become_partial_and_lossy_records() {
    let (env, image) = Env::with_busybox().await;
    let sandbox = sandbox_name();
    let script =
        "printf 'a\\377b\\n'; head -c 250 /dev/zero | tr '\\0' x; echo; printf 'no newline'";
    let id = env.create(&image, &sandbox, &["sh", "-c", script]).await;
    let dir = env.ctrd.dir().join("data").join("logs").join(&sandbox);
    let mut config = DriverConfig::new(&dir, "app");
    config.max_line = 100;
    let io = config.task_io(converge()).expect("driver io");
    env.client.start_task(&id, &io).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(20), env.client.wait_task(&id))
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(exit, 0);
    let log = config.path();
    eventually("the long line's last piece", || texts(&log).len() >= 4).await;
    // The shim holds its end of the pipes until the task is deleted, so only then does the
    // driver see end of file and write the unterminated last line.
    assert_eq!(
        texts(&log).len(),
        4,
        "the unterminated line waits for end of file"
    );
    env.client
        .remove_container(&id, Duration::from_secs(1))
        .await
        .expect("remove");
    eventually("the unterminated last line", || {
        texts(&log).last().map(String::as_str) == Some("no newline")
    })
    .await;
    let records = LogReader::new(&log).tail(None).expect("tail").records;
    let got: Vec<(String, usize)> = records
        .iter()
        .map(|r| (r.tag.as_str().to_string(), r.text.len()))
        .collect();
    assert_eq!(records[0].text, "a\u{fffd}b");
    assert_eq!(
        &got[1..4],
        &[
            ("P".to_string(), 100),
            ("P".to_string(), 100),
            ("F".to_string(), 50)
        ]
    );
    assert_eq!(got[4], ("F".to_string(), "no newline".len()));
}
