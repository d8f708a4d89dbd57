//! Integration tests of `EntityClient` against a real entity server: typed errors, optimistic
//! concurrency, atomic batches, filters, reconnection and TCP.

mod watch_harness;

use converge::server::{Bound, listen, open_store, serve_bound};
use converge_watch::{ClientError, EntityClient, Kind, ListFilter, PutSpec, ServerAddress};
use serde_json::json;
use watch_harness::{TestServer, sandbox_id, sandbox_spec};

#[tokio::test]
async fn create_only_put_of_an_existing_entity_is_a_conflict_naming_its_revision() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    let id = sandbox_id("web");
    let created = client
        .put(&id, &sandbox_spec(None, 1), Some(0))
        .await
        .expect("create");
    assert_eq!(created.id, id);
    assert!(created.revision > 0);
    match client.put(&id, &sandbox_spec(None, 2), Some(0)).await {
        Err(ClientError::Conflict {
            id: conflict_id,
            current,
            ..
        }) => {
            assert_eq!(conflict_id, "sandbox/web");
            assert_eq!(current, Some(created.revision));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let stored = client.get(&id).await.expect("get").expect("exists");
    assert_eq!(
        stored.spec,
        sandbox_spec(None, 1),
        "the refused put changed nothing"
    );
}

#[tokio::test]
async fn status_patches_need_the_current_revision() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    let id = sandbox_id("web");
    let v1 = client
        .put(&id, &sandbox_spec(None, 1), None)
        .await
        .expect("create");
    let v2 = client
        .put(&id, &sandbox_spec(None, 2), Some(v1.revision))
        .await
        .expect("update");

    let status = json!({"phase": "running"});
    match client.patch_status(&id, &status, v1.revision).await {
        Err(err @ ClientError::Conflict { .. }) => {
            assert!(!err.is_retryable());
            let ClientError::Conflict { current, .. } = err else {
                unreachable!()
            };
            assert_eq!(current, Some(v2.revision));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let patched = client
        .patch_status(&id, &status, v2.revision)
        .await
        .expect("patch");
    assert_eq!(patched.status, status);
    assert_eq!(patched.spec, sandbox_spec(None, 2));
    assert!(patched.revision > v2.revision);
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_field_and_change_nothing() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    let id = sandbox_id("web");
    match client.put(&id, &json!({"containers": []}), None).await {
        Err(ClientError::Invalid(message)) => {
            assert!(message.contains("spec.containers"), "{message}");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    assert_eq!(client.get(&id).await.expect("get"), None);
}

#[tokio::test]
async fn missing_entities_read_as_none_and_cannot_be_deleted() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    assert_eq!(client.get(&sandbox_id("ghost")).await.expect("get"), None);
    assert!(matches!(
        client.delete(&sandbox_id("ghost"), None).await,
        Err(ClientError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_batch_with_one_bad_put_applies_nothing() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    let good = PutSpec {
        id: sandbox_id("good"),
        spec: sandbox_spec(None, 1),
        expected_revision: None,
    };
    let bad = PutSpec {
        id: sandbox_id("bad"),
        spec: json!({"containers": 5}),
        expected_revision: None,
    };
    assert!(matches!(
        client.put_batch(vec![good.clone(), bad]).await,
        Err(ClientError::Invalid(_))
    ));
    let (all, _) = client.list(&ListFilter::default()).await.expect("list");
    assert!(
        all.is_empty(),
        "nothing of the failed batch was applied: {all:?}"
    );

    let other = PutSpec {
        id: sandbox_id("other"),
        ..good.clone()
    };
    let stored = client.put_batch(vec![good, other]).await.expect("batch");
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].id, sandbox_id("good"));
    assert_eq!(stored[1].id, sandbox_id("other"));
}

#[tokio::test]
async fn list_filters_by_kind_and_reports_the_revision_it_was_read_at() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    let sandbox = client
        .put(&sandbox_id("s"), &sandbox_spec(None, 1), None)
        .await
        .expect("put");
    let artifact_id = "artifact/img".parse().expect("id");
    let artifact_spec = json!({
        "image": "cluster.local:5000/demo:v1",
        "manifest": format!("sha256:{}", "a".repeat(64)),
        "state": "active",
    });
    let artifact = client
        .put(&artifact_id, &artifact_spec, None)
        .await
        .expect("put artifact");

    let only_sandboxes = ListFilter {
        kind: Some(Kind::Sandbox),
        ..Default::default()
    };
    let (sandboxes, revision) = client.list(&only_sandboxes).await.expect("list");
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(sandboxes[0].id, sandbox.id);
    assert!(revision >= artifact.revision);

    let deleted = client
        .delete(&artifact_id, Some(artifact.revision))
        .await
        .expect("delete");
    assert_eq!(deleted.id, artifact_id);
    let (all, _) = client.list(&ListFilter::default()).await.expect("list");
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn a_client_keeps_working_after_the_server_restarts() {
    let mut server = TestServer::start(1000).await;
    let client = server.client().await;
    let id = sandbox_id("web");
    client
        .put(&id, &sandbox_spec(None, 1), None)
        .await
        .expect("put");
    server.stop().await;
    let down = client.get(&id).await.expect_err("server is down");
    assert!(down.is_retryable(), "{down:?}");
    server.restart().await;
    let back = client
        .get(&id)
        .await
        .expect("get after restart")
        .expect("still stored");
    assert_eq!(back.spec, sandbox_spec(None, 1));
}

#[tokio::test]
async fn clients_connect_over_tcp_on_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = converge::server::StoreUrl::Redb(dir.path().join("entities.redb"));
    let store = open_store(&url, 1000).await.expect("open store");
    let any_port: ServerAddress = "tcp:127.0.0.1:0".parse().expect("address");
    let bound = listen::bind(&any_port).await.expect("bind");
    let Bound::Tcp(listener) = &bound else {
        panic!("a tcp listener")
    };
    let port = listener.local_addr().expect("local addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_bound(store, bound, async move {
        let _ = stopped.await;
    }));

    let address: ServerAddress = format!("tcp:127.0.0.1:{port}").parse().expect("address");
    let client = EntityClient::connect(&address)
        .await
        .expect("connect over tcp");
    assert_eq!(client.address(), address.to_string());
    client
        .put(&sandbox_id("web"), &sandbox_spec(None, 1), None)
        .await
        .expect("put");
    assert!(client.get(&sandbox_id("web")).await.expect("get").is_some());

    let _ = stop.send(());
    task.await.expect("server task").expect("clean shutdown");
}

#[tokio::test]
async fn connecting_to_the_first_reachable_of_several_addresses() {
    let server = TestServer::start(1000).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let nowhere = ServerAddress::Unix(dir.path().join("nobody.sock"));
    let client = EntityClient::connect_any(&[nowhere.clone(), server.address()])
        .await
        .expect("connect");
    assert_eq!(client.address(), format!("{nowhere},{}", server.address()));
    assert_eq!(client.get(&sandbox_id("web")).await.expect("get"), None);
    assert!(matches!(
        EntityClient::connect_any(&[]).await,
        Err(ClientError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_client_of_several_servers_fails_over_when_its_server_goes_away() {
    let mut first = TestServer::start(1000).await;
    let second = TestServer::start(1000).await;
    let on_second = sandbox_id("on-second");
    second
        .client()
        .await
        .put(&on_second, &sandbox_spec(None, 1), None)
        .await
        .expect("put");

    let client = EntityClient::connect_any(&[first.address(), second.address()])
        .await
        .expect("connect");
    assert_eq!(client.get(&on_second).await.expect("get from first"), None);

    first.stop().await;
    // A call racing the dying connection may fail once; the next one reconnects elsewhere.
    let mut found = None;
    for _ in 0..20 {
        match client.get(&on_second).await {
            Ok(entity) => {
                found = entity;
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    assert!(found.is_some(), "the client moved to the second server");

    // It stays there even once the first server is back.
    first.restart().await;
    assert!(client.get(&on_second).await.expect("get").is_some());
}

#[tokio::test]
async fn a_conflicting_batch_names_the_entity_that_conflicted_and_applies_nothing() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    let existing = client
        .put(&sandbox_id("b"), &sandbox_spec(None, 1), None)
        .await
        .expect("put");
    let batch = vec![
        PutSpec {
            id: sandbox_id("a"),
            spec: sandbox_spec(None, 1),
            expected_revision: Some(0),
        },
        PutSpec {
            id: sandbox_id("b"),
            spec: sandbox_spec(None, 2),
            expected_revision: Some(0),
        },
    ];
    match client.put_batch(batch).await {
        Err(ClientError::Conflict { id, current, .. }) => {
            assert_eq!(id, "sandbox/b");
            assert_eq!(current, Some(existing.revision));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(client.get(&sandbox_id("a")).await.expect("get"), None);
}
