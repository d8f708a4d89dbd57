//! Unit tests of endpoint computation and the sandbox-event mapper, with caches filled by
//! hand.

use converge_watch::cache::Cache;
use converge_watch::spec::ServiceSpec;
use converge_watch::{Entity, EntityId, StreamEvent};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::*;

pub(super) fn id(s: &str) -> EntityId {
    s.parse().expect("id")
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn web_spec(target_port: Option<u32>) -> ServiceSpec {
    ServiceSpec {
        selector: labels(&[("app", "web")]),
        port: 80,
        target_port,
    }
}

/// A sandbox labelled `app=<app>` on `node` declaring port 8080, with phase and ip.
pub(super) fn sandbox(name: &str, app: &str, node: &str, phase: &str, ip: Option<&str>) -> Entity {
    let mut e = Entity::new(
        id(&format!("sandbox/{name}")),
        json!({"node": node, "labels": {"app": app},
               "containers": [{"name": "c", "image": "busybox", "ports": [{"port": 8080}]}]}),
    );
    e.status = match ip {
        Some(ip) => json!({"phase": phase, "ip": ip}),
        None => json!({"phase": phase}),
    };
    e
}

pub(super) fn service(name: &str, spec: &ServiceSpec, revision: i64) -> Entity {
    let mut e = Entity::new(
        id(&format!("service/{name}")),
        serde_json::to_value(spec).expect("spec"),
    );
    e.revision = revision;
    e
}

pub(super) fn restarted(entities: Vec<Entity>, revision: i64) -> StreamEvent {
    StreamEvent::Restarted { entities, revision }
}

#[test]
fn a_selector_matches_labels_carrying_all_its_pairs_and_an_empty_one_matches_nothing() {
    let sel = labels(&[("app", "web"), ("tier", "front")]);
    assert!(selector_matches(
        &sel,
        &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
    ));
    assert!(!selector_matches(&sel, &labels(&[("app", "web")])));
    assert!(!selector_matches(
        &sel,
        &labels(&[("app", "web"), ("tier", "back")])
    ));
    assert!(!selector_matches(
        &BTreeMap::new(),
        &labels(&[("app", "web")])
    ));
    assert!(!selector_matches(&BTreeMap::new(), &BTreeMap::new()));
}

#[test]
fn selectors_read_sandbox_labels_straight_from_json_and_odd_documents_match_nothing() {
    let s = sandbox("s", "web", "n", "running", None);
    assert!(endpoints::selects(&labels(&[("app", "web")]), &s));
    assert!(!endpoints::selects(&labels(&[("app", "api")]), &s));
    assert!(!endpoints::selects(&BTreeMap::new(), &s));
    assert!(json_selects(&json!({"app": "web"}), &s));
    for odd in [json!({}), json!({"app": 1}), json!("app=web"), Value::Null] {
        assert!(!json_selects(&odd, &s), "{odd}");
    }
    let mut numeric = s.clone();
    numeric.spec["labels"] = json!({"app": 1});
    assert!(!endpoints::selects(&labels(&[("app", "1")]), &numeric));
    let mut unlabelled = s;
    unlabelled.spec["labels"] = json!("web");
    assert!(!json_selects(&json!({"app": "web"}), &unlabelled));
}

#[test]
fn only_running_matching_sandboxes_with_an_ip_and_the_declared_port_are_endpoints() {
    let mut stopped_spec = sandbox("web-stopping", "web", "n1", "running", Some("10.88.0.9"));
    stopped_spec.spec["state"] = json!("stopped");
    let mut undeclared = sandbox("web-noport", "web", "n1", "running", Some("10.88.0.8"));
    undeclared.spec["containers"][0]["ports"] = json!([{"port": 9090}]);
    let sandboxes = [
        sandbox("web-1", "web", "n1", "running", Some("10.88.0.5")),
        sandbox("web-2", "web", "n2", "pending", Some("10.88.0.6")),
        sandbox("web-3", "web", "n1", "failed", Some("10.88.0.7")),
        sandbox("web-4", "web", "n1", "running", None),
        sandbox("api-1", "api", "n1", "running", Some("10.88.0.10")),
        stopped_spec,
        undeclared,
    ];
    let set = compute_endpoints(&web_spec(Some(8080)), &sandboxes, "");
    let addresses: Vec<&str> = set.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, ["10.88.0.5:8080"]);
    let reasons: Vec<String> = set
        .not_ready
        .iter()
        .map(|(id, why)| format!("{} {why}", id.name()))
        .collect();
    assert_eq!(
        reasons,
        [
            "web-2 pending",
            "web-3 failed",
            "web-4 no ip",
            "web-noport port 8080 not declared",
            "web-stopping state stopped",
        ]
    );
}

#[test]
fn endpoints_carry_ip_port_node_and_sandbox_and_sort_by_address_numerically() {
    let sandboxes = [
        sandbox("b", "web", "node-b", "running", Some("10.88.0.10")),
        sandbox("a", "web", "", "running", Some("10.88.0.9")),
    ];
    let mut spec = web_spec(None);
    spec.port = 8080;
    let set = compute_endpoints(&spec, &sandboxes, "node-a");
    assert_eq!(
        set.endpoints,
        vec![
            Endpoint {
                ip: "10.88.0.9".into(),
                port: 8080,
                address: "10.88.0.9:8080".into(),
                node: "node-a".into(),
                sandbox: id("sandbox/a"),
            },
            Endpoint {
                ip: "10.88.0.10".into(),
                port: 8080,
                address: "10.88.0.10:8080".into(),
                node: "node-b".into(),
                sandbox: id("sandbox/b"),
            },
        ],
        "target_port defaults to port; an unassigned sandbox is on the default node"
    );
}

#[test]
fn the_status_keeps_its_observed_revision_until_the_spec_changes() {
    let spec = web_spec(Some(8080));
    let sandboxes = [sandbox("web-1", "web", "n1", "running", Some("10.88.0.5"))];
    let set = compute_endpoints(&spec, &sandboxes, "");
    let mut svc = service("web", &spec, 4);
    let first = status_for(&svc, &spec, &set).expect("status");
    assert_eq!(first["observed_revision"], 4);
    assert_eq!(first["message"], "1 endpoint");
    assert_eq!(
        first["endpoints"],
        json!([{"ip": "10.88.0.5", "port": 8080, "address": "10.88.0.5:8080",
                "node": "n1", "sandbox": "sandbox/web-1"}])
    );
    svc.status = first.clone();
    svc.revision = 5;
    assert_eq!(
        status_for(&svc, &spec, &set).expect("status"),
        first,
        "same inputs: same status, so nothing is rewritten"
    );
    let mut changed = spec.clone();
    changed.target_port = Some(9090);
    let moved = status_for(&svc, &changed, &EndpointSet::default()).expect("status");
    assert_eq!(moved["observed_revision"], 5);
    assert_eq!(moved["message"], "no sandbox matches app=web");
}

#[test]
fn the_message_names_at_most_three_sandboxes_that_are_not_ready() {
    let sandboxes: Vec<Entity> = (1..=5)
        .map(|i| sandbox(&format!("w{i}"), "web", "n", "pending", None))
        .collect();
    let set = compute_endpoints(&web_spec(Some(8080)), &sandboxes, "");
    assert_eq!(
        super::endpoints::message_for(&web_spec(Some(8080)), &set),
        "0 endpoints; not ready: w1 (pending), w2 (pending), w3 (pending) and 2 more"
    );
}

fn mapper_with(services: Vec<Entity>, sandboxes: Vec<Entity>) -> SandboxEventMapper {
    let service_cache = Cache::new();
    service_cache.apply(&restarted(services, 10));
    let sandbox_cache = Cache::new();
    sandbox_cache.apply(&restarted(sandboxes, 10));
    SandboxEventMapper::new(sandbox_cache, service_cache)
}

#[test]
fn a_sandbox_event_maps_to_the_services_selecting_its_old_or_new_labels() {
    let web = service("web", &web_spec(Some(8080)), 1);
    let mut api_spec = web_spec(Some(8080));
    api_spec.selector = labels(&[("app", "api")]);
    let api = service("api", &api_spec, 2);
    let mut db_spec = web_spec(Some(8080));
    db_spec.selector = labels(&[("app", "db")]);
    let db = service("db", &db_spec, 3);
    let before = sandbox("s1", "web", "n", "running", Some("10.88.0.5"));
    let mapper = mapper_with(vec![web, api, db], vec![before.clone()]);

    let mut relabelled = before.clone();
    relabelled.spec["labels"] = json!({"app": "api"});
    relabelled.revision = 11;
    assert_eq!(
        mapper.map(&StreamEvent::Applied(relabelled.clone())),
        vec![id("service/api"), id("service/web")],
        "the old service (to drop it) and the new one"
    );
    assert!(
        mapper.map(&StreamEvent::Applied(relabelled)).is_empty(),
        "a stale replay maps to nothing"
    );
    let fresh = sandbox("s2", "db", "n", "pending", None);
    let mut fresh = fresh;
    fresh.revision = 12;
    assert_eq!(
        mapper.map(&StreamEvent::Applied(fresh)),
        vec![id("service/db")]
    );
}

#[test]
fn a_deleted_sandbox_maps_to_every_service_that_listed_it() {
    let mut web = service("web", &web_spec(Some(8080)), 1);
    let mut other_spec = web_spec(Some(8080));
    other_spec.selector = labels(&[("app", "other")]);
    let mut other = service("other", &other_spec, 2);
    // `other` still lists s1 from before a relabel it has not seen yet.
    other.status = json!({"endpoints": [{"sandbox": "sandbox/s1"}]});
    web.status = json!({"endpoints": []});
    let s1 = sandbox("s1", "web", "n", "running", Some("10.88.0.5"));
    let mapper = mapper_with(vec![web, other], vec![s1.clone()]);
    let keys = mapper.map(&StreamEvent::Deleted {
        entity: s1,
        revision: 20,
    });
    assert_eq!(keys, vec![id("service/other"), id("service/web")]);
}

#[test]
fn a_relist_that_changed_anything_maps_to_every_service() {
    let web = service("web", &web_spec(Some(8080)), 1);
    let mapper = mapper_with(vec![web], vec![]);
    assert!(
        mapper.map(&restarted(vec![], 30)).is_empty(),
        "an unchanged relist maps to nothing"
    );
    let s = sandbox("s", "nope", "n", "running", None);
    assert_eq!(mapper.map(&restarted(vec![s], 31)), vec![id("service/web")]);
}
