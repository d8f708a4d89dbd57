//! `converge server` runs the service controller beside the entity server: sandboxes of
//! several nodes (their statuses written here as their node controllers would) become the
//! endpoints of a service, each with its node; no containerd is involved.

mod cli_support;

use std::time::Duration;

use cli_support::ServerProcess;
use converge_watch::{EntityClient, EntityId, ServerAddress};
use serde_json::{Value, json};

fn id(s: &str) -> EntityId {
    s.parse().expect("id")
}

/// A sandbox of `node` labelled `app=<app>` declaring port 8080.
fn sandbox_spec(node: &str, app: &str) -> Value {
    json!({"node": node, "labels": {"app": app},
           "containers": [{"name": "web", "image": "busybox", "ports": [{"port": 8080}]}]})
}

/// Writes a `running` status with `ip`, as the sandbox's node controller would.
async fn report_running(client: &EntityClient, sandbox: &EntityId, ip: &str) {
    let current = client
        .get(sandbox)
        .await
        .expect("get sandbox")
        .expect("sandbox exists");
    client
        .patch_status(
            sandbox,
            &json!({"phase": "running", "ip": ip}),
            current.revision,
        )
        .await
        .expect("patch status");
}

async fn wait_endpoints(client: &EntityClient, what: &str, want: &[(&str, &str)]) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = client
            .get(&id("service/web"))
            .await
            .expect("get service")
            .map(|e| e.status)
            .unwrap_or(Value::Null);
        let got: Vec<(String, String)> = last["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
                (text("address"), text("node"))
            })
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, n)| (a.to_string(), n.to_string()))
            .collect();
        if got == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service/web: {what} never happened; last status {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_lists_endpoints_of_sandboxes_on_every_node_and_follows_relabels() {
    let dir = tempfile::Builder::new()
        .prefix("converge-svc-")
        .tempdir()
        .expect("temp dir");
    let server = ServerProcess::start(dir.path());
    let address: ServerAddress = server.address().parse().expect("address");
    let client = EntityClient::connect(&address).await.expect("connect");

    client
        .put(
            &id("service/web"),
            &json!({"selector": {"app": "web"}, "port": 8080}),
            None,
        )
        .await
        .expect("put service");
    let (a, b, c) = (
        id("sandbox/web-a"),
        id("sandbox/web-b"),
        id("sandbox/api-c"),
    );
    client
        .put(&a, &sandbox_spec("node-a", "web"), None)
        .await
        .expect("put");
    client
        .put(&b, &sandbox_spec("node-b", "web"), None)
        .await
        .expect("put");
    client
        .put(&c, &sandbox_spec("node-a", "api"), None)
        .await
        .expect("put");
    wait_endpoints(&client, "an empty endpoint list", &[]).await;

    report_running(&client, &b, "10.88.1.7").await;
    report_running(&client, &a, "10.88.0.12").await;
    report_running(&client, &c, "10.88.0.13").await;
    let status = wait_endpoints(
        &client,
        "both web sandboxes listed, sorted by address",
        &[("10.88.0.12:8080", "node-a"), ("10.88.1.7:8080", "node-b")],
    )
    .await;
    assert_eq!(status["message"], "2 endpoints", "{status}");
    assert_eq!(status["endpoints"][1]["sandbox"], "sandbox/web-b");

    // Relabel: web-b leaves the service, api-c joins it (its status is kept as is).
    client
        .put(&b, &sandbox_spec("node-b", "api"), None)
        .await
        .expect("relabel b");
    client
        .put(&c, &sandbox_spec("node-a", "web"), None)
        .await
        .expect("relabel c");
    wait_endpoints(
        &client,
        "the relabelled sandboxes swapped",
        &[("10.88.0.12:8080", "node-a"), ("10.88.0.13:8080", "node-a")],
    )
    .await;

    let out = cli_support::run(&server.address(), &["get", "service/web", "-o", "json"], "").ok();
    let from_cli: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        from_cli["status"]["endpoints"][1]["sandbox"],
        "sandbox/api-c"
    );

    client.delete(&a, None).await.expect("delete a");
    wait_endpoints(
        &client,
        "the deleted sandbox dropped",
        &[("10.88.0.13:8080", "node-a")],
    )
    .await;
}
