//! Unit tests of the client's error mapping, filters and decoding.

use super::*;
use serde_json::json;

fn sandbox(name: &str, node: Option<&str>) -> Entity {
    let spec = match node {
        Some(n) => json!({"node": n}),
        None => json!({}),
    };
    Entity::new(EntityId::new(Kind::Sandbox, name).expect("id"), spec)
}

#[test]
fn aborted_status_becomes_a_conflict_carrying_the_current_revision() {
    let mut status = Status::aborted("revision moved on");
    status
        .metadata_mut()
        .insert(CURRENT_REVISION_METADATA, "42".parse().expect("meta"));
    let id: EntityId = "sandbox/web".parse().expect("id");
    match ClientError::from_status(status, "unix:/x", Some(&id)) {
        ClientError::Conflict {
            id,
            current,
            message,
        } => {
            assert_eq!(id, "sandbox/web");
            assert_eq!(current, Some(42));
            assert_eq!(message, "revision moved on");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn status_codes_map_to_typed_errors() {
    let map = |s| ClientError::from_status(s, "tcp:h:1", None);
    assert!(matches!(
        map(Status::not_found("x")),
        ClientError::NotFound(_)
    ));
    assert!(
        matches!(map(Status::invalid_argument("spec.node")), ClientError::Invalid(m) if m == "spec.node")
    );
    assert!(matches!(
        map(Status::unauthenticated("no")),
        ClientError::Unauthenticated(_)
    ));
    let unavailable = map(Status::unavailable("down"));
    assert!(unavailable.is_retryable());
    assert!(unavailable.to_string().contains("tcp:h:1"));
    assert!(!map(Status::aborted("c")).is_retryable());
    assert!(matches!(map(Status::data_loss("d")), ClientError::Other(_)));
}

#[test]
fn errors_without_a_known_id_take_it_from_the_servers_message() {
    let status = Status::aborted("sandbox/b changed: expected revision 3, current revision 5");
    match ClientError::from_status(status, "unix:/x", None) {
        ClientError::Conflict { id, .. } => assert_eq!(id, "sandbox/b"),
        other => panic!("unexpected {other:?}"),
    }
    let status = Status::not_found("sandbox/ghost not found");
    let err = ClientError::from_status(status, "unix:/x", None);
    assert_eq!(err.to_string(), "sandbox/ghost not found");
    let status = Status::not_found("no such thing");
    assert_eq!(
        ClientError::from_status(status, "unix:/x", None).to_string(),
        "no such thing not found"
    );
}

#[test]
fn node_filter_matches_like_the_server() {
    let only_a = ListFilter {
        node: Some("a".into()),
        ..Default::default()
    };
    assert!(only_a.matches(&sandbox("s1", Some("a"))));
    assert!(!only_a.matches(&sandbox("s2", Some("b"))));
    assert!(!only_a.matches(&sandbox("s3", None)));
    let with_unassigned = ListFilter {
        include_unassigned: true,
        ..only_a.clone()
    };
    assert!(with_unassigned.matches(&sandbox("s3", None)));
    let artifact = Entity::new("artifact/x".parse().expect("id"), json!({}));
    assert!(only_a.matches(&artifact));
    let sandboxes = ListFilter {
        kind: Some(Kind::Sandbox),
        ..Default::default()
    };
    assert!(!sandboxes.matches(&artifact));
}

#[test]
fn watch_events_of_unknown_type_are_a_decode_error() {
    let ev = proto::WatchEvent {
        r#type: 99,
        ..Default::default()
    };
    assert!(matches!(
        decode_watch_event(&ev),
        Err(ClientError::Decode { .. })
    ));
    let ev = proto::WatchEvent {
        r#type: 0,
        ..Default::default()
    };
    assert!(matches!(
        decode_watch_event(&ev),
        Err(ClientError::Decode { .. })
    ));
}

#[tokio::test]
async fn connecting_where_nothing_listens_names_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = ServerAddress::Unix(dir.path().join("missing.sock"));
    let err = EntityClient::connect(&addr)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ClientError::Unavailable { .. }));
    assert!(err.to_string().contains("missing.sock"), "{err}");
    assert!(err.is_retryable());
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let causes = causes.join(": ");
    assert!(
        causes.contains("No such file"),
        "the reason is in the chain: {causes}"
    );
}
