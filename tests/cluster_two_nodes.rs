//! Issue #7 end to end: a 3-member etcd cluster, two `converge server` processes on it (TCP
//! with a token; the first also serves the registry, which requires the token too) and two
//! `converge controller` processes, node-a and node-b, each with its own private containerd
//! and both servers (one as fallback). busybox is pushed to the registry as an artifact and
//! every node pulls it with the token. Checked: a sandbox for node-b runs only on node-b and
//! its status is written; a write through one server reaches a watcher on the other;
//! requests without the token (or with a wrong one) are refused and change nothing; with an
//! etcd member killed, a new sandbox for node-a still reaches running; with server 1 killed,
//! node-b's controller fails over to server 2 and a delete made there tears its sandbox down.

mod cluster_support;
mod sandbox_support;

use cluster_support::{
    ConvergeProcess, WAIT, eventually, free_addr, token_file, wait_for_server, with_token,
};
use converge::artifact::{ImportRequest, import_image};
use converge_reconcilers::containerd::{ContainerdClient, LABEL_ENTITY_ID};
use converge_testkit::etcd::EtcdCluster;
use converge_testkit::{PrivateContainerd, busybox_image_layout, unique_name};
use converge_watch::client::{BearerToken, ClientOptions};
use converge_watch::{
    ClientError, Entity, EntityClient, EntityId, Kind, ListFilter, RawWatchEvent, ServerAddress,
};
use futures::StreamExt;
use serde_json::{Value, json};

const IMAGE: &str = "cluster.local:5000/two-node/busybox:v1";

/// One node: its private containerd (and a client in the controller's namespace) and the
/// controller process. The controller is killed before containerd is torn down.
struct Node {
    controller: ConvergeProcess,
    containerd: ContainerdClient,
    ctrd: PrivateContainerd,
}

impl Node {
    async fn start_containerd() -> (PrivateContainerd, ContainerdClient) {
        sandbox_support::private_containerd("two").await
    }

    /// The containers labelled as owned by `id` in this node's containerd.
    async fn containers_of(&self, id: &EntityId) -> usize {
        self.containerd
            .list_containers(&[(LABEL_ENTITY_ID, &id.to_string())])
            .await
            .expect("list containers")
            .len()
    }
}

/// Controller flags of `node_id` against `servers` (the first preferred).
fn controller_args(
    node_id: &str,
    servers: [&ServerAddress; 2],
    token: &std::path::Path,
    registry_url: &str,
    data_dir: &std::path::Path,
    ctrd: &PrivateContainerd,
    containerd: &ContainerdClient,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        // Its own server first, then the one to fail over to.
        "--server".into(),
        format!("{},{}", servers[0], servers[1]),
        "--token-file".into(),
        token.display().to_string(),
        "controller".into(),
        "--registry-url".into(),
        registry_url.into(),
        "--node-id".into(),
        node_id.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--containerd-socket".into(),
        ctrd.socket().display().to_string(),
        "--containerd-root".into(),
        ctrd.root().display().to_string(),
        "--runc-root".into(),
        ctrd.runc_root().display().to_string(),
        "--namespace".into(),
        containerd.namespace().into(),
    ];
    args.extend(
        [
            "--host-network",
            "--resync",
            "5s",
            "--stop-grace",
            "1s",
            "--workers",
            "2",
        ]
        .map(String::from),
    );
    args
}

fn sandbox_spec(node: &str) -> Value {
    json!({"node": node, "state": "running", "restart": "always",
           "containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "1000"]}]})
}

/// Puts through `client`, retrying while etcd elects a leader or a server is away (an
/// unconditional put of the same spec is safe to repeat).
async fn put_retrying(client: &EntityClient, id: &EntityId, spec: &Value) -> Entity {
    eventually(&format!("the put of {id}"), || async {
        match client.put(id, spec, None).await {
            Ok(entity) => Some(entity),
            Err(e) => {
                eprintln!("put of {id} failed, retrying: {e}");
                None
            }
        }
    })
    .await
}

/// Waits until `id`'s status says running for its current spec, read through `client`.
async fn wait_running(client: &EntityClient, id: &EntityId, applied: &Entity) -> Value {
    eventually(&format!("{id} running"), || async {
        let entity = client.get(id).await.ok()??;
        let status = entity.status;
        (status["phase"] == "running" && status["observed_revision"] == applied.revision)
            .then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_etcd_cluster_through_two_servers_and_survive_failures() {
    let dir = tempfile::Builder::new()
        .prefix("converge-two-")
        .tempdir()
        .expect("temp dir");
    let mut etcd = EtcdCluster::start(3).await.expect("start etcd");
    let store = format!("etcd:{}", etcd.endpoints().join(","));
    let (token_path, token) = token_file(dir.path());
    let options = with_token(&token);

    // Two entity servers on the cluster; the first also serves the registry.
    let addrs = [free_addr(), free_addr()];
    let registry_addr = free_addr();
    let registry_url = format!("http://{registry_addr}");
    let servers: Vec<ServerAddress> = addrs
        .iter()
        .map(|a| ServerAddress::Tcp(a.clone()))
        .collect();
    let server_args = |i: usize| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--token-file".into(),
            token_path.display().to_string(),
            "server".into(),
            "--store".into(),
            store.clone(),
            "--listen".into(),
            servers[i].to_string(),
        ];
        if i == 0 {
            args.extend([
                "--registry".into(),
                registry_addr.clone(),
                "--artifact-dir".into(),
                dir.path().join("artifacts").display().to_string(),
            ]);
        } else {
            args.push("--no-registry".into());
        }
        args
    };
    let mut server1 = ConvergeProcess::spawn(dir.path(), "server-1", &server_args(0));
    let mut server2 = ConvergeProcess::spawn(dir.path(), "server-2", &server_args(1));
    let client1 = wait_for_server(&mut server1, &servers[0], &options).await;
    let client2 = wait_for_server(&mut server2, &servers[1], &options).await;

    // busybox goes to the registry as an artifact, with the token.
    let layout = busybox_image_layout(dir.path().join("layout")).expect("busybox layout");
    let archive = dir.path().join("busybox.tar");
    layout.to_oci_archive(&archive).expect("oci archive");
    let request = ImportRequest::new(archive, IMAGE, None, &registry_url)
        .expect("import request")
        .with_access(&options);
    import_image(&client1, &request)
        .await
        .expect("import busybox through the registry");

    // Two nodes: node-a prefers server 2, node-b server 1.
    let mut nodes = Vec::new();
    for (node_id, preferred) in [
        ("node-a", [&servers[1], &servers[0]]),
        ("node-b", [&servers[0], &servers[1]]),
    ] {
        let (ctrd, containerd) = Node::start_containerd().await;
        let data_dir = dir.path().join(node_id);
        let args = controller_args(
            node_id,
            preferred,
            &token_path,
            &registry_url,
            &data_dir,
            &ctrd,
            &containerd,
        );
        let controller = ConvergeProcess::spawn(dir.path(), node_id, &args);
        nodes.push(Node {
            controller,
            containerd,
            ctrd,
        });
    }
    let (node_a, node_b) = (&nodes[0], &nodes[1]);

    // A write through server 1 reaches a watcher on server 2.
    let filter = ListFilter {
        kind: Some(Kind::Sandbox),
        ..Default::default()
    };
    // From the revision a list reports, so the put below cannot slip in before the watch.
    let (_, revision) = client2.list(&filter).await.expect("list on server 2");
    let mut events = client2
        .watch_raw(&filter, revision + 1)
        .await
        .expect("watch on server 2");
    let on_b = EntityId::new(Kind::Sandbox, unique_name("on-b")).expect("id");
    let created = client1
        .put(&on_b, &sandbox_spec("node-b"), Some(0))
        .await
        .expect("create through server 1");
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if let Ok(RawWatchEvent::Put(entity)) = event
                && entity.id == on_b
            {
                return entity;
            }
        }
        panic!("the watch on server 2 ended");
    })
    .await
    .expect("the put reaches server 2's watcher in time");
    assert_eq!(seen.revision, created.revision);
    assert_eq!(seen.spec, created.spec);
    drop(events);

    // The sandbox for node-b runs on node-b only, and node-b writes its status.
    let status = wait_running(&client2, &on_b, &created).await;
    assert_eq!(status["containers"][0]["state"], "running", "{status}");
    assert_eq!(node_b.containers_of(&on_b).await, 1);
    assert_eq!(
        node_a.containers_of(&on_b).await,
        0,
        "node-a ran node-b's sandbox"
    );

    // Without the token, or with a wrong one, calls are refused and change nothing.
    let intruder = EntityId::new(Kind::Sandbox, unique_name("intruder")).expect("id");
    let wrong = ClientOptions::default()
        .with_token(BearerToken::new("not-the-token-0123456789").expect("token"));
    for (who, options) in [
        ("no token", ClientOptions::default()),
        ("wrong token", wrong),
    ] {
        let stranger = EntityClient::connect_with(std::slice::from_ref(&servers[0]), &options)
            .await
            .expect("connect");
        match stranger.put(&intruder, &sandbox_spec("node-a"), None).await {
            Err(ClientError::Unauthenticated(_)) => {}
            other => panic!("{who}: a put was not refused: {other:?}"),
        }
        match stranger.delete(&on_b, None).await {
            Err(ClientError::Unauthenticated(_)) => {}
            other => panic!("{who}: a delete was not refused: {other:?}"),
        }
        match stranger.get(&on_b).await {
            Err(ClientError::Unauthenticated(_)) => {}
            other => panic!("{who}: a get was not refused: {other:?}"),
        }
    }
    assert!(client2.get(&intruder).await.expect("get").is_none());
    let still = client2.get(&on_b).await.expect("get").expect("still there");
    assert_eq!(still.spec, created.spec);

    // One etcd member down (the leader, forcing an election): node-a still gets a sandbox.
    let leader = etcd.leader().await.unwrap_or(0);
    etcd.kill_member(leader).expect("kill an etcd member");
    let on_a = EntityId::new(Kind::Sandbox, unique_name("on-a")).expect("id");
    let applied = put_retrying(&client2, &on_a, &sandbox_spec("node-a")).await;
    wait_running(&client1, &on_a, &applied).await;
    assert_eq!(node_a.containers_of(&on_a).await, 1);
    assert_eq!(
        node_b.containers_of(&on_a).await,
        0,
        "node-b ran node-a's sandbox"
    );

    // Server 1 down: node-b's controller fails over to server 2, where the delete is made.
    server1.kill();
    eventually("the delete through server 2", || async {
        match client2.delete(&on_b, None).await {
            Ok(_) | Err(ClientError::NotFound(_)) => Some(()),
            Err(e) => {
                eprintln!("delete of {on_b} failed, retrying: {e}");
                None
            }
        }
    })
    .await;
    eventually("node-b tearing its sandbox down", || async {
        (node_b.containers_of(&on_b).await == 0).then_some(())
    })
    .await;
    assert!(
        nodes[1]
            .controller
            .logged("failed over to another entity server"),
        "node-b did not report its failover"
    );
    // node-a's sandbox is untouched, and both controllers are still up.
    assert_eq!(node_a.containers_of(&on_a).await, 1);
    for node in &mut nodes {
        node.controller.assert_running();
    }
    server2.assert_running();

    // Teardown: controllers first (so nothing is recreated), then servers, then containerd.
    for node in &mut nodes {
        node.controller.kill();
    }
    server2.kill();
    for node in nodes {
        node.ctrd.stop().await.expect("stop containerd");
    }
    drop(etcd);
}
