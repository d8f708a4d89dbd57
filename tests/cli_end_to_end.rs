//! End-to-end tests of the CLI verbs against a real `converge server` subprocess.

mod cli_support;

use std::time::Duration;

use cli_support::{Follower, ServerProcess, run, sandbox_yaml};

fn server() -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path());
    (dir, server)
}

#[test]
fn apply_from_a_file_then_get_returns_it_as_table_json_and_yaml() {
    let (dir, server) = server();
    let addr = server.address();
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, sandbox_yaml("web", "busybox")).expect("write");
    let path = file.to_str().expect("utf-8 path");

    assert_eq!(
        run(&addr, &["apply", "-f", path], "").ok(),
        "sandbox/web created\n"
    );

    let table = run(&addr, &["get", "sandbox"], "").ok();
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("ID            PHASE    NODE     IP       CONTAINERS   RESTARTS   AGE"),
        "{table}"
    );
    let row = lines.next().expect("row");
    assert!(
        row.starts_with("sandbox/web   <none>   <none>   <none>   0/1          0          "),
        "{table}"
    );

    let json = run(&addr, &["get", "sandbox/web", "-o", "json"], "").ok();
    let v: serde_json::Value = serde_json::from_str(&json).expect("json object");
    assert_eq!(v["id"], "sandbox/web");
    assert_eq!(v["kind"], "sandbox");
    assert_eq!(v["spec"]["containers"][0]["image"], "busybox");
    assert!(v["revision"].as_i64().expect("revision") > 0);

    let list = run(&addr, &["get", "-o", "json"], "").ok();
    let v: serde_json::Value = serde_json::from_str(&list).expect("json array");
    assert_eq!(v.as_array().map(Vec::len), Some(1));

    let yaml = run(&addr, &["-o", "yaml", "get", "sandbox/web"], "").ok();
    assert!(
        yaml.starts_with("id: sandbox/web\nkind: sandbox\n"),
        "{yaml}"
    );

    let mixed = run(&addr, &["get"], "").ok();
    assert!(
        mixed.starts_with("ID            KIND      REVISION   AGE\nsandbox/web   sandbox   "),
        "{mixed}"
    );
}

#[test]
fn reapplying_reports_unchanged_and_a_changed_spec_configured() {
    let (_dir, server) = server();
    let addr = server.address();
    let first = format!(
        "{}---\n{}",
        sandbox_yaml("a", "busybox"),
        sandbox_yaml("b", "busybox")
    );
    assert_eq!(
        run(&addr, &["apply", "-f", "-"], &first).ok(),
        "sandbox/a created\nsandbox/b created\n"
    );
    let second = format!(
        "{}---\n{}",
        sandbox_yaml("a", "busybox"),
        sandbox_yaml("b", "busybox:2")
    );
    assert_eq!(
        run(&addr, &["apply", "-f", "-"], &second).ok(),
        "sandbox/a unchanged\nsandbox/b configured\n"
    );
    let stored = run(
        &addr,
        &["apply", "-f", "-", "-o", "json"],
        &sandbox_yaml("a", "busybox:3"),
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&stored).expect("json list");
    assert_eq!(v[0]["id"], "sandbox/a");
    assert_eq!(v[0]["spec"]["containers"][0]["image"], "busybox:3");
}

#[test]
fn get_json_output_applies_back_unchanged() {
    let (_dir, server) = server();
    let addr = server.address();
    let svc =
        r#"{"kind": "service", "name": "web", "spec": {"selector": {"app": "web"}, "port": 80}}"#;
    let both = format!("[{svc}, {}]", serde_json::to_string(&serde_json::json!({
        "id": "artifact/demo",
        "spec": {"image": "cluster.local:5000/demo:v1", "manifest": format!("sha256:{}", "ab".repeat(32))}
    })).expect("json"));
    run(&addr, &["apply", "-f", "-"], &both).ok();
    let json = run(&addr, &["get", "-o", "json"], "").ok();
    assert_eq!(
        run(&addr, &["apply", "-f", "-"], &json).ok(),
        "artifact/demo unchanged\nservice/web unchanged\n"
    );
    let yaml = run(&addr, &["get", "-o", "yaml"], "").ok();
    assert_eq!(
        run(&addr, &["apply", "-f", "-"], &yaml).ok(),
        "artifact/demo unchanged\nservice/web unchanged\n"
    );
    let table = run(&addr, &["get", "artifacts"], "").ok();
    assert!(
        table.contains("cluster.local:5000/demo:v1   active   sha256:abababababab   "),
        "{table}"
    );
}

#[test]
fn a_list_with_one_invalid_item_applies_nothing() {
    let (_dir, server) = server();
    let addr = server.address();
    let input = format!(
        "- {}\n- id: sandbox/bad\n  spec:\n    containers:\n    - name: app\n      image: busybox\n      ports:\n      - port: 70000\n",
        sandbox_yaml("good", "busybox")
            .replace('\n', "\n  ")
            .trim_end()
    );
    let err = run(&addr, &["apply", "-f", "-"], &input).failed();
    assert!(err.contains("item 2 (sandbox/bad)"), "{err}");
    assert!(err.contains("spec.containers[0].ports[0].port"), "{err}");
    let listed = run(&addr, &["get", "-o", "json"], "").ok();
    assert_eq!(listed.trim(), "[]", "nothing may be stored");
}

#[test]
fn an_empty_table_says_so_on_stderr_only() {
    let (_dir, server) = server();
    let out = run(&server.address(), &["get", "sandboxes"], "");
    assert_eq!((out.code, out.stdout.as_str()), (0, ""));
    assert_eq!(out.stderr, "No entities found.\n");
}

#[test]
fn delete_removes_an_entity_and_a_second_delete_fails() {
    let (_dir, server) = server();
    let addr = server.address();
    run(
        &addr,
        &["apply", "-f", "-"],
        &sandbox_yaml("gone", "busybox"),
    )
    .ok();
    assert_eq!(
        run(&addr, &["delete", "sandbox/gone"], "").ok(),
        "sandbox/gone deleted\n"
    );
    let err = run(&addr, &["delete", "sandbox/gone"], "").failed();
    assert_eq!(err, "error: sandbox/gone not found\n");
    let err = run(&addr, &["get", "sandbox/gone"], "").failed();
    assert_eq!(err, "error: sandbox/gone not found\n");
}

#[test]
fn describe_explains_an_entity() {
    let (_dir, server) = server();
    let addr = server.address();
    run(
        &addr,
        &["apply", "-f", "-"],
        &sandbox_yaml("web", "busybox"),
    )
    .ok();
    let text = run(&addr, &["describe", "sandbox/web"], "").ok();
    for want in [
        "ID:       sandbox/web\n",
        "Kind:     sandbox\n",
        "Spec:\n",
        "    image: busybox\n",
        "Status:\n  <none>\n",
        "Events:\n  <none>\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn data_survives_a_server_restart_on_the_same_file() {
    let (_dir, mut server) = server();
    let addr = server.address();
    run(
        &addr,
        &["apply", "-f", "-"],
        &sandbox_yaml("kept", "busybox"),
    )
    .ok();
    let before = run(&addr, &["get", "sandbox/kept", "-o", "json"], "").ok();
    server.restart();
    let after = run(&addr, &["get", "sandbox/kept", "-o", "json"], "").ok();
    assert_eq!(before, after);
}

#[test]
fn watch_prints_changes_and_follows_across_a_server_restart() {
    let (_dir, mut server) = server();
    let addr = server.address();
    let watch = Follower::start(&addr, &["watch", "sandbox"]);
    run(&addr, &["apply", "-f", "-"], &sandbox_yaml("w1", "busybox")).ok();
    let line = watch.wait_for("sandbox/w1", Duration::from_secs(20));
    assert!(line.contains("  PUT  sandbox/w1  "), "{line}");

    server.restart();
    run(&addr, &["apply", "-f", "-"], &sandbox_yaml("w2", "busybox")).ok();
    watch.wait_for("PUT  sandbox/w2", Duration::from_secs(40));
    run(&addr, &["delete", "sandbox/w1"], "").ok();
    watch.wait_for("DELETE  sandbox/w1", Duration::from_secs(20));
    assert_eq!(watch.interrupt(), 0, "Ctrl-C ends watch cleanly");
}

#[test]
fn watch_json_prints_one_object_per_change() {
    let (_dir, server) = server();
    let addr = server.address();
    let watch = Follower::start(&addr, &["watch", "-o", "json"]);
    run(&addr, &["apply", "-f", "-"], &sandbox_yaml("j", "busybox")).ok();
    let line = watch.wait_for("sandbox/j", Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["type"], "PUT");
    assert_eq!(v["entity"]["id"], "sandbox/j");
}

#[test]
fn concurrent_applies_of_one_entity_never_fail_with_a_raw_conflict() {
    let (_dir, server) = server();
    let addr = server.address();
    let images: Vec<String> = (0..4).map(|i| format!("busybox:{i}")).collect();
    let handles: Vec<_> = images
        .iter()
        .map(|image| {
            let (addr, doc) = (addr.clone(), sandbox_yaml("race", image));
            std::thread::spawn(move || run(&addr, &["apply", "-f", "-"], &doc))
        })
        .collect();
    let mut succeeded = 0;
    for handle in handles {
        let out = handle.join().expect("thread");
        if out.code == 0 {
            succeeded += 1;
            assert!(
                [
                    "sandbox/race created\n",
                    "sandbox/race configured\n",
                    "sandbox/race unchanged\n"
                ]
                .contains(&out.stdout.as_str()),
                "{}",
                out.stdout
            );
        } else {
            assert!(
                out.stderr.contains("kept changing while being applied"),
                "{}",
                out.stderr
            );
        }
    }
    assert!(succeeded >= 1);
    let json = run(&addr, &["get", "sandbox/race", "-o", "json"], "").ok();
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let stored = v["spec"]["containers"][0]["image"]
        .as_str()
        .expect("image")
        .to_string();
    assert!(images.contains(&stored), "{stored}");
}
