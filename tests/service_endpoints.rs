//! Services end to end: a private containerd, real sandboxes with networking (bridge
//! `cvt<random>`, subnet `10.199.171.0/24`, used by no other test), the entity server and
//! the service controller in this process; the CLI binary reads the result.

mod cli_support;
mod sandbox_support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge::daemon::services::{ServiceControllerConfig, run_service_controller};
use converge_watch::client::ListFilter;
use converge_watch::{EntityId, Kind, StreamConfig, StreamEvent, watch_stream};
use futures::StreamExt;
use sandbox_support::{Env, IMAGE, NODE, TestNetwork, sandbox_id};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// This test's subnet (third octet), unique among the tests.
const SUBNET_OCTET: u8 = 171;

/// Stops the service controller when dropped, also when the test fails.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A sandbox labelled `app=web` serving HTTP on 8080 with busybox httpd.
fn web_sandbox() -> Value {
    json!({"labels": {"app": "web"},
           "containers": [{"name": "web", "image": IMAGE,
                           "command": ["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"],
                           "ports": [{"port": 8080}]}]})
}

fn service_id() -> EntityId {
    "service/web".parse().expect("id")
}

/// The sorted `address`es in a service status.
fn addresses(status: &Value) -> Vec<String> {
    let mut list: Vec<String> = status["endpoints"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| e["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

async fn service_status(env: &Env) -> Value {
    env.client
        .get(&service_id())
        .await
        .expect("get service")
        .map(|e| e.status)
        .unwrap_or(Value::Null)
}

/// Polls the service's status until `pred` holds (30 s at most); returns it.
async fn wait_service(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = service_status(env).await;
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service/web: {what} never happened; last status {last}");
}

/// Runs the CLI binary against the test's server and returns its stdout.
async fn cli(env: &Env, args: &[&str]) -> String {
    let address = env.server.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_support::run(&address, &refs, "").ok()
    })
    .await
    .expect("cli task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_lists_ready_sandboxes_and_drops_stopped_deleted_and_deaf_ones() {
    let mut env = Env::start().await;
    let mut net = TestNetwork::fresh();
    net.subnet = format!("10.199.{SUBNET_OCTET}.0/24");
    net.prefix = format!("10.199.{SUBNET_OCTET}.");
    env.net = Some(net);
    let config = env.network_config(false);
    env.start_controller_with(config);
    let stop = StopOnDrop(CancellationToken::new());
    let services = tokio::spawn(run_service_controller(
        env.client.clone(),
        ServiceControllerConfig {
            resync: Duration::from_secs(1),
            default_node: NODE.to_string(),
            ..ServiceControllerConfig::default()
        },
        stop.0.clone(),
    ));

    // Every status the controller writes comes by as a watch event: record each address
    // and sandbox that was ever listed.
    let listed = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let recorder = {
        let listed = listed.clone();
        let filter = ListFilter {
            kind: Some(Kind::Service),
            ..ListFilter::default()
        };
        let mut events = Box::pin(watch_stream(
            env.client.clone(),
            filter,
            StreamConfig::default(),
        ));
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let StreamEvent::Applied(e) = event {
                    for endpoint in e.status["endpoints"].as_array().into_iter().flatten() {
                        let mut seen = listed.lock().expect("lock");
                        seen.insert(endpoint["sandbox"].as_str().unwrap_or("").to_string());
                    }
                }
            }
        })
    };
    let (one, two, deaf) = (
        converge_testkit::unique_name("web"),
        converge_testkit::unique_name("web"),
        converge_testkit::unique_name("deaf"),
    );
    env.client
        .put(
            &service_id(),
            &json!({"selector": {"app": "web"}, "port": 80, "target_port": 8080}),
            None,
        )
        .await
        .expect("put service");
    env.apply(&one, web_sandbox()).await;
    env.apply(&two, web_sandbox()).await;
    env.apply(
        &deaf,
        json!({"labels": {"app": "web"}, "port_timeout_seconds": 1,
               "containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "1000"],
                               "ports": [{"port": 8080}]}]}),
    )
    .await;

    let ip_of = |status: &Value| status["ip"].as_str().unwrap_or("").to_string();
    let ip_one = ip_of(
        &env.wait_status(&one, "running", |s| s["phase"] == "running")
            .await,
    );
    let ip_two = ip_of(
        &env.wait_status(&two, "running", |s| s["phase"] == "running")
            .await,
    );
    env.wait_status(&deaf, "failed", |s| s["phase"] == "failed")
        .await;
    let mut want = vec![format!("{ip_one}:8080"), format!("{ip_two}:8080")];
    want.sort();
    let status = wait_service(&env, "both endpoints listed", |s| addresses(s) == want).await;
    for endpoint in status["endpoints"].as_array().expect("endpoints") {
        assert_eq!(endpoint["node"], NODE, "{endpoint}");
        assert_eq!(endpoint["port"], 8080, "{endpoint}");
        let sandbox = endpoint["sandbox"].as_str().expect("sandbox");
        assert!(
            sandbox == sandbox_id(&one).to_string() || sandbox == sandbox_id(&two).to_string(),
            "{endpoint}"
        );
        let addr: SocketAddr = endpoint["address"]
            .as_str()
            .expect("address")
            .parse()
            .expect("socket address");
        tokio::task::spawn_blocking(move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .await
        .expect("connect task")
        .expect("each endpoint accepts connections");
    }
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("2 endpoints; not ready: ") && message.contains(&deaf),
        "the deaf sandbox matches but is not ready: {message}"
    );

    let json_out = cli(&env, &["get", "service/web", "-o", "json"]).await;
    let from_cli: Value = serde_json::from_str(&json_out).expect("get -o json parses");
    assert_eq!(addresses(&from_cli["status"]), want, "{json_out}");
    let table = cli(&env, &["get", "services"]).await;
    assert!(
        table.contains(&want[0]) && table.contains(&want[1]),
        "{table}"
    );
    let described = cli(&env, &["describe", "service/web"]).await;
    for (ip, name) in [(&ip_one, &one), (&ip_two, &two)] {
        let row = described
            .lines()
            .find(|l| l.contains(&format!("{ip}:8080")))
            .unwrap_or_else(|| panic!("no endpoint row for {ip} in\n{described}"));
        assert!(row.contains(&format!("sandbox/{name}")), "{row}");
        assert!(row.contains(NODE), "{row}");
    }

    let mut stopped = web_sandbox();
    stopped["state"] = json!("stopped");
    env.apply(&one, stopped).await;
    wait_service(&env, "the stopped sandbox's endpoint removed", |s| {
        addresses(s) == [format!("{ip_two}:8080")]
    })
    .await;

    env.client
        .delete(&sandbox_id(&two), None)
        .await
        .expect("delete sandbox");
    let status = wait_service(&env, "the deleted sandbox's endpoint removed", |s| {
        addresses(s).is_empty()
    })
    .await;
    assert!(status["endpoints"].is_array(), "{status}");
    recorder.abort();
    let seen = listed.lock().expect("lock").clone();
    assert_eq!(
        seen,
        BTreeSet::from([sandbox_id(&one).to_string(), sandbox_id(&two).to_string()]),
        "only the ready sandboxes were ever listed, never the one whose port stayed closed"
    );

    for name in [&one, &deaf] {
        env.client
            .delete(&sandbox_id(name), None)
            .await
            .expect("delete sandbox");
    }
    for name in [&one, &two, &deaf] {
        env.eventually("the sandbox's containers are gone", || async {
            env.containers_of(name).await.is_empty()
        })
        .await;
    }
    drop(stop);
    services
        .await
        .expect("service controller task")
        .expect("service controller");
    env.shutdown().await;
}
