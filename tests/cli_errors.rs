//! The CLI refuses bad input and unreachable servers with one clear message and no output.

mod cli_support;

use cli_support::{ServerProcess, command, run, sandbox_yaml};

#[test]
fn bad_apply_input_is_refused_with_a_message_and_empty_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path());
    let addr = server.address();
    let big = "x".repeat(1024 * 1024 + 10);
    let oversize = format!(
        r#"{{"id": "sandbox/big", "spec": {{"labels": {{"a": "{big}"}}, "containers": [{{"name": "a", "image": "x"}}]}}}}"#
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "malformed JSON",
            r#"{"id": "sandbox/a", "spec": {"#.into(),
            "invalid JSON",
        ),
        (
            "malformed YAML",
            "id: sandbox/a\nspec: [unclosed\n".into(),
            "invalid YAML in document 1",
        ),
        (
            "wrong type",
            r#"{"id": "sandbox/a", "spec": {"containers": [{"name": "a", "image": 5}]}}"#.into(),
            "item 1 (sandbox/a): spec.containers[0].image",
        ),
        (
            "invalid name",
            r#"{"id": "sandbox/Not_Valid", "spec": {"containers": []}}"#.into(),
            "item 1: id: invalid name",
        ),
        (
            "unknown kind",
            r#"{"id": "pod/a", "spec": {}}"#.into(),
            "unknown kind",
        ),
        (
            "missing spec",
            r#"{"id": "sandbox/a"}"#.into(),
            "item 1 (sandbox/a): spec: is required",
        ),
        ("oversize", oversize, "item 1 (sandbox/big): entity: is"),
        (
            "duplicate ids",
            format!(
                "{}---\n{}",
                sandbox_yaml("d", "busybox"),
                sandbox_yaml("d", "busybox")
            ),
            "item 2 (sandbox/d): duplicate id",
        ),
        ("empty", "\n".into(), "no entities found"),
    ];
    for (what, input, want) in cases {
        let err = run(&addr, &["apply", "-f", "-"], &input).failed();
        assert!(err.contains(want), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    }
    let missing = dir.path().join("missing.yaml");
    let err = run(
        &addr,
        &["apply", "-f", missing.to_str().expect("utf-8")],
        "",
    )
    .failed();
    assert!(
        err.contains("cannot read") && err.contains("missing.yaml"),
        "{err}"
    );
    assert_eq!(run(&addr, &["get", "-o", "json"], "").ok().trim(), "[]");
}

#[test]
fn get_of_an_unknown_kind_or_bad_id_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path());
    let addr = server.address();
    let err = run(&addr, &["get", "pods"], "").failed();
    assert!(err.contains("unknown kind \"pods\""), "{err}");
    let err = run(&addr, &["get", "sandbox/UPPER"], "").failed();
    assert!(err.contains("invalid name"), "{err}");
    let err = run(&addr, &["describe", "service/none"], "").failed();
    assert_eq!(err, "error: service/none not found\n");
}

#[test]
fn get_against_a_socket_where_nothing_listens_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("unix:{}", dir.path().join("nobody.sock").display());
    let err = run(&addr, &["get"], "").failed();
    assert!(
        err.contains("cannot reach the entity server at unix:"),
        "{err}"
    );
    assert!(err.contains("nobody.sock"), "{err}");
    let err = run(&addr, &["apply", "-f", "-"], &sandbox_yaml("x", "busybox")).failed();
    assert!(err.contains("cannot reach the entity server"), "{err}");

    // A socket file left behind by a server that is gone: connection refused.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let addr = format!("unix:{}", stale.display());
    let err = run(&addr, &["get", "sandbox/x"], "").failed();
    assert!(
        err.contains("cannot reach the entity server at unix:"),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn usage_errors_exit_with_two() {
    for args in [
        &["--server", "http://x", "get"][..],
        &["get", "--no-such-flag"],
        &["-o", "xml", "get"],
        &["apply"],
        &["frobnicate"],
    ] {
        let out = command("unix:/nonexistent/converge.sock", args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn an_invalid_rust_log_filter_is_a_clear_error() {
    let out = command("unix:/nonexistent/converge.sock", &["get"])
        .env("RUST_LOG", "converge=notalevel")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: invalid RUST_LOG filter"),
        "{stderr}"
    );
}

#[test]
fn json_log_format_writes_one_json_object_per_line_on_stderr() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(cli_support::BIN)
        .arg("server")
        .args(["--registry", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("redb:{}", dir.path().join("db.redb").display()))
        .arg("--listen")
        .arg(format!("unix:{}", dir.path().join("s.sock").display()))
        .env("CONVERGE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stderr = child.stderr.take().expect("piped stderr");
    let first = BufReader::new(stderr).lines().next();
    let _ = child.kill();
    let _ = child.wait();
    let line = first.expect("a log line").expect("readable");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["level"], "INFO", "{line}");
}
