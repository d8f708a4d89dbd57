//! Integration tests of the resumable watch stream and the cache against a real entity server.

mod watch_harness;

use std::time::Duration;

use converge_watch::{
    Cache, Kind, ListFilter, PutSpec, StreamConfig, StreamEvent, reflect, watch_stream,
};
use watch_harness::{
    TestServer, names, next_event, over_wire, sandbox_id, sandbox_put, sandbox_spec,
};

fn fast_backoff() -> StreamConfig {
    StreamConfig::with_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

#[tokio::test]
async fn stream_resumes_after_a_server_restart_without_losing_or_repeating_events() {
    let mut server = TestServer::start(1000).await;
    let client = server.client().await;
    client
        .put(&sandbox_id("a"), &sandbox_spec(None, 1), None)
        .await
        .expect("put a");
    client
        .put(&sandbox_id("b"), &sandbox_spec(None, 1), None)
        .await
        .expect("put b");

    let mut stream = Box::pin(watch_stream(
        client.clone(),
        ListFilter::default(),
        fast_backoff(),
    ));
    let StreamEvent::Restarted {
        entities,
        revision: listed_at,
    } = next_event(&mut stream).await
    else {
        panic!("the first event is a full list");
    };
    assert_eq!(names(&entities), ["a", "b"]);

    let c = client
        .put(&sandbox_id("c"), &sandbox_spec(None, 1), None)
        .await
        .expect("put c");
    assert_eq!(
        next_event(&mut stream).await,
        StreamEvent::Applied(c.clone())
    );
    assert!(c.revision > listed_at);

    // Changes made while the server is down must arrive once it is back, in order.
    server.stop().await;
    let store = server.offline_store().await;
    let d = store
        .put(vec![sandbox_put("d", None, 1)])
        .await
        .expect("put d")
        .remove(0);
    let a2 = store
        .put(vec![sandbox_put("a", None, 2)])
        .await
        .expect("update a")
        .remove(0);
    let (b_last, b_deleted_at) = store
        .delete(&sandbox_id("b"), None)
        .await
        .expect("delete b");
    store.close().await.expect("close offline store");
    drop(store);
    server.restart().await;

    assert_eq!(
        next_event(&mut stream).await,
        StreamEvent::Applied(over_wire(d))
    );
    assert_eq!(
        next_event(&mut stream).await,
        StreamEvent::Applied(over_wire(a2))
    );
    assert_eq!(
        next_event(&mut stream).await,
        StreamEvent::Deleted {
            entity: over_wire(b_last),
            revision: b_deleted_at
        }
    );

    // The next event is a new change, not a replay of anything seen before.
    let e = client
        .put(&sandbox_id("e"), &sandbox_spec(None, 1), None)
        .await
        .expect("put e");
    assert_eq!(next_event(&mut stream).await, StreamEvent::Applied(e));
}

#[tokio::test]
async fn a_watch_that_falls_behind_relists_and_the_cache_sees_the_missed_deletion() {
    let mut server = TestServer::start(2).await;
    let client = server.client().await;
    for name in ["a", "b", "c"] {
        client
            .put(&sandbox_id(name), &sandbox_spec(None, 1), None)
            .await
            .expect("put");
    }

    let cache = Cache::new();
    let stream = watch_stream(client.clone(), ListFilter::default(), fast_backoff());
    let mut stream = Box::pin(reflect(stream, cache.clone()));
    let (first, _) = tokio::time::timeout(
        watch_harness::EVENT_TIMEOUT,
        futures::StreamExt::next(&mut stream),
    )
    .await
    .expect("first event in time")
    .expect("stream never ends");
    assert!(matches!(first, StreamEvent::Restarted { .. }));
    assert!(cache.is_ready());
    assert_eq!(cache.len(), 3);

    // While the server is down, b is deleted and enough is written that the history the
    // watch would resume from is compacted away.
    server.stop().await;
    let store = server.offline_store().await;
    store
        .delete(&sandbox_id("b"), None)
        .await
        .expect("delete b");
    for i in 0..12 {
        store
            .put(vec![sandbox_put(&format!("n{i}"), None, 1)])
            .await
            .expect("put");
    }
    let final_revision = store.revision().await.expect("revision");
    store.close().await.expect("close offline store");
    drop(store);
    server.restart().await;

    let (event, changed) = tokio::time::timeout(
        watch_harness::EVENT_TIMEOUT,
        futures::StreamExt::next(&mut stream),
    )
    .await
    .expect("relist in time")
    .expect("stream never ends");
    let StreamEvent::Restarted { entities, revision } = event else {
        panic!("a compacted watch relists, got {event:?}");
    };
    assert_eq!(revision, final_revision);
    assert_eq!(entities.len(), 14);
    assert!(
        changed.contains(&sandbox_id("b")),
        "the missed deletion is reported: {changed:?}"
    );
    assert!(changed.contains(&sandbox_id("n11")));
    assert!(
        !changed.contains(&sandbox_id("a")),
        "unchanged entities are not reported"
    );
    assert!(cache.get(&sandbox_id("b")).is_none());
    assert_eq!(cache.revision(), final_revision);
    assert_eq!(cache.len(), 14);
}

#[tokio::test]
async fn a_node_filtered_watch_sees_only_its_nodes_sandboxes() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    client
        .put(&sandbox_id("mine"), &sandbox_spec(Some("node-a"), 1), None)
        .await
        .expect("put");
    client
        .put(
            &sandbox_id("theirs"),
            &sandbox_spec(Some("node-b"), 1),
            None,
        )
        .await
        .expect("put");
    client
        .put(&sandbox_id("nobodys"), &sandbox_spec(None, 1), None)
        .await
        .expect("put");

    let filter = ListFilter {
        kind: Some(Kind::Sandbox),
        node: Some("node-a".to_string()),
        include_unassigned: false,
    };
    let mut stream = Box::pin(watch_stream(client.clone(), filter, fast_backoff()));
    let StreamEvent::Restarted { entities, .. } = next_event(&mut stream).await else {
        panic!("the first event is a full list");
    };
    assert_eq!(names(&entities), ["mine"]);

    // Changes on other nodes are not delivered; moving onto and off the node are.
    client
        .put(
            &sandbox_id("theirs"),
            &sandbox_spec(Some("node-b"), 2),
            None,
        )
        .await
        .expect("put");
    let arrived = client
        .put(
            &sandbox_id("nobodys"),
            &sandbox_spec(Some("node-a"), 2),
            None,
        )
        .await
        .expect("put");
    let left = client
        .put(&sandbox_id("mine"), &sandbox_spec(Some("node-b"), 2), None)
        .await
        .expect("put");

    assert_eq!(next_event(&mut stream).await, StreamEvent::Applied(arrived));
    match next_event(&mut stream).await {
        StreamEvent::Deleted { entity, revision } => {
            assert_eq!(entity.id, sandbox_id("mine"));
            assert_eq!(revision, left.revision);
        }
        other => panic!("moving off the node is a deletion, got {other:?}"),
    }
}

#[tokio::test]
async fn unassigned_sandboxes_are_included_when_asked() {
    let server = TestServer::start(1000).await;
    let client = server.client().await;
    client
        .put(&sandbox_id("mine"), &sandbox_spec(Some("node-a"), 1), None)
        .await
        .expect("put");
    client
        .put(
            &sandbox_id("theirs"),
            &sandbox_spec(Some("node-b"), 1),
            None,
        )
        .await
        .expect("put");
    client
        .put(&sandbox_id("nobodys"), &sandbox_spec(None, 1), None)
        .await
        .expect("put");

    let filter = ListFilter {
        kind: None,
        node: Some("node-a".to_string()),
        include_unassigned: true,
    };
    let mut stream = Box::pin(watch_stream(client.clone(), filter, fast_backoff()));
    let StreamEvent::Restarted { entities, .. } = next_event(&mut stream).await else {
        panic!("the first event is a full list");
    };
    assert_eq!(names(&entities), ["mine", "nobodys"]);
    let fresh = client
        .put(&sandbox_id("fresh"), &sandbox_spec(None, 1), None)
        .await
        .expect("put");
    assert_eq!(next_event(&mut stream).await, StreamEvent::Applied(fresh));
}

#[tokio::test]
async fn a_live_watch_that_is_not_read_falls_behind_and_relists_without_missing_a_deletion() {
    let server = TestServer::start(2).await;
    let client = server.client().await;
    client
        .put(&sandbox_id("victim"), &sandbox_spec(None, 1), None)
        .await
        .expect("put victim");

    let cache = Cache::new();
    let stream = watch_stream(client.clone(), ListFilter::default(), fast_backoff());
    let mut stream = Box::pin(reflect(stream, cache.clone()));
    let (first, _) = tokio::time::timeout(
        watch_harness::EVENT_TIMEOUT,
        futures::StreamExt::next(&mut stream),
    )
    .await
    .expect("first event in time")
    .expect("stream never ends");
    assert!(matches!(first, StreamEvent::Restarted { .. }));

    // One change read through the stream proves the watch is open.
    let opener = client
        .put(&sandbox_id("opener"), &sandbox_spec(None, 1), None)
        .await
        .expect("put");
    let (event, _) = tokio::time::timeout(
        watch_harness::EVENT_TIMEOUT,
        futures::StreamExt::next(&mut stream),
    )
    .await
    .expect("opener in time")
    .expect("stream never ends");
    assert_eq!(event, StreamEvent::Applied(opener));

    // Now stop reading while far more is written than every buffer between
    // the store and the consumer holds (about 8 MiB of events), and the victim is deleted.
    let padding = "x".repeat(4000);
    for batch in 0..20 {
        let puts = (0..100)
            .map(|i| {
                let mut spec = sandbox_spec(None, 1);
                spec["containers"][0]["env"] = serde_json::json!({"PAD": padding});
                PutSpec {
                    id: sandbox_id(&format!("b{batch}-{i}")),
                    spec,
                    expected_revision: None,
                }
            })
            .collect();
        client.put_batch(puts).await.expect("batch");
    }
    client
        .delete(&sandbox_id("victim"), None)
        .await
        .expect("delete victim");
    let (_, final_revision) = client.list(&ListFilter::default()).await.expect("list");

    // Whatever was buffered arrives first; then the compacted watch relists.
    let mut buffered = 0;
    let removed = loop {
        let (event, changed) = tokio::time::timeout(
            watch_harness::EVENT_TIMEOUT,
            futures::StreamExt::next(&mut stream),
        )
        .await
        .expect("events keep coming")
        .expect("stream never ends");
        match event {
            StreamEvent::Restarted { revision, .. } => {
                assert_eq!(revision, final_revision);
                break changed;
            }
            StreamEvent::Deleted { .. } => panic!("the deletion came after the buffers filled"),
            StreamEvent::Applied(_) => buffered += 1,
        }
    };
    eprintln!("{buffered} buffered events arrived before the relist");
    assert!(buffered < 2000, "the watch really fell behind");
    assert!(
        removed.contains(&sandbox_id("victim")),
        "the relist reports the missed deletion"
    );
    assert!(cache.get(&sandbox_id("victim")).is_none());
    assert_eq!(cache.len(), 2001);
    assert_eq!(cache.revision(), final_revision);
}
