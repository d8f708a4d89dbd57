//! Unit tests of apply input parsing: formats, item rules and the errors they produce.

use super::*;

fn ids(items: &[ApplyItem]) -> Vec<String> {
    items.iter().map(|i| i.id.to_string()).collect()
}

fn item_error(text: &str) -> (usize, Option<String>, String, String) {
    match parse_items(text) {
        Err(InputError::Item {
            index,
            id,
            field,
            message,
        }) => (index, id, field, message),
        other => panic!("expected an item error, got {other:?}"),
    }
}

const WEB_JSON: &str =
    r#"{"id": "sandbox/web", "spec": {"containers": [{"name": "app", "image": "busybox"}]}}"#;

#[test]
fn a_single_json_entity_parses() {
    let items = parse_items(WEB_JSON).expect("valid");
    assert_eq!(ids(&items), ["sandbox/web"]);
    assert_eq!(items[0].index, 1);
    assert_eq!(items[0].spec["containers"][0]["name"], "app");
}

#[test]
fn json_lists_items_objects_and_concatenated_values_all_parse() {
    let b = WEB_JSON.replace("sandbox/web", "sandbox/b");
    for text in [
        format!("[{WEB_JSON}, {b}]"),
        format!(r#"{{"items": [{WEB_JSON}, {b}]}}"#),
        format!("{WEB_JSON}\n{b}\n"),
    ] {
        assert_eq!(
            ids(&parse_items(&text).expect(&text)),
            ["sandbox/web", "sandbox/b"]
        );
    }
}

#[test]
fn yaml_documents_lists_and_kind_plus_name_parse() {
    let text = "\
kind: sandbox
name: web
spec:
  containers:
  - name: app
    image: busybox
---
- id: artifact/demo
  spec:
    image: cluster.local:5000/demo:v1
    manifest: sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
---
";
    let items = parse_items(text).expect("valid");
    assert_eq!(ids(&items), ["sandbox/web", "artifact/demo"]);
    assert_eq!(items[1].index, 2);
}

#[test]
fn server_kept_fields_are_ignored_so_get_output_applies_again() {
    let text = r#"[{"id": "service/s", "kind": "service", "spec": {"selector": {"app": "web"}, "port": 80},
        "status": {"endpoints": []}, "revision": 9, "create_revision": 3,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}]"#;
    let items = parse_items(text).expect("valid");
    assert_eq!(ids(&items), ["service/s"]);
}

#[test]
fn malformed_json_and_yaml_are_refused_with_the_parser_position() {
    let e = parse_items(r#"{"id": "sandbox/a", "spec": "#).expect_err("json");
    assert!(matches!(e, InputError::Json(_)), "{e:?}");
    let e = parse_items("id: sandbox/a\n---\nspec: [unclosed\n").expect_err("yaml");
    assert!(matches!(e, InputError::Yaml { document: 2, .. }), "{e:?}");
}

#[test]
fn wrong_types_name_the_item_and_field() {
    let text = format!(
        r#"[{WEB_JSON}, {{"id": "sandbox/b", "spec": {{"containers": [{{"name": "a", "image": 5}}]}}}}]"#
    );
    let (index, id, field, _) = item_error(&text);
    assert_eq!(
        (index, id.as_deref(), field.as_str()),
        (2, Some("sandbox/b"), "spec.containers[0].image")
    );
    let (_, _, field, message) = item_error(r#"{"id": 7, "spec": {}}"#);
    assert_eq!(
        (field.as_str(), message.as_str()),
        ("id", "must be a string, found a number")
    );
    let (_, _, field, _) = item_error(r#"{"id": "sandbox/a", "spec": "x"}"#);
    assert_eq!(field, "spec");
    let (_, _, field, _) = item_error(r#"["sandbox/a"]"#);
    assert_eq!(field, "item");
}

#[test]
fn invalid_names_unknown_kinds_and_mismatches_are_refused() {
    let spec = r#""spec": {"containers": [{"name": "a", "image": "x"}]}"#;
    for (text, want) in [
        (format!(r#"{{"id": "sandbox/Web", {spec}}}"#), "id"),
        (format!(r#"{{"id": "pod/web", {spec}}}"#), "id"),
        (
            format!(r#"{{"kind": "sandbox", "name": "-x", {spec}}}"#),
            "name",
        ),
        (format!(r#"{{"kind": "sandbox", {spec}}}"#), "name"),
        (format!(r#"{{{spec}}}"#), "id"),
        (
            format!(r#"{{"id": "sandbox/a", "kind": "service", {spec}}}"#),
            "kind",
        ),
        (
            format!(r#"{{"id": "sandbox/a", "name": "b", {spec}}}"#),
            "name",
        ),
        (r#"{"id": "sandbox/a"}"#.to_string(), "spec"),
        (
            format!(r#"{{"id": "sandbox/a", "specc": 1, {spec}}}"#),
            "specc",
        ),
    ] {
        assert_eq!(item_error(&text).2, want, "{text}");
    }
}

#[test]
fn duplicate_ids_are_refused() {
    let e = parse_items(&format!("[{WEB_JSON}, {WEB_JSON}]")).expect_err("dup");
    assert_eq!(
        e.to_string(),
        "item 2 (sandbox/web): duplicate id, already given by item 1"
    );
}

#[test]
fn oversize_entities_are_refused_by_size() {
    let big = "x".repeat(1024 * 1024 + 1);
    let text = format!(
        r#"{{"id": "sandbox/a", "spec": {{"labels": {{"a": "{big}"}}, "containers": [{{"name": "a", "image": "x"}}]}}}}"#
    );
    assert_eq!(item_error(&text).2, "entity");
}

#[test]
fn empty_input_is_refused() {
    for text in [
        "",
        "   \n",
        "---\n",
        "# only a comment\n",
        "[]",
        r#"{"items": []}"#,
    ] {
        assert!(
            matches!(parse_items(text), Err(InputError::Empty)),
            "{text:?}"
        );
    }
}

#[test]
fn errors_read_as_one_line_naming_item_and_field() {
    let e = parse_items(r#"{"id": "sandbox/web", "spec": {"containers": []}}"#).expect_err("bad");
    assert_eq!(
        e.to_string(),
        "item 1 (sandbox/web): spec.containers: must list at least one container"
    );
}

#[test]
fn an_oversize_file_is_refused_before_parsing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.json");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(MAX_INPUT_BYTES + 1).expect("grow");
    assert!(matches!(
        read_input(&path),
        Err(InputError::TooLarge { .. })
    ));
    let missing = dir.path().join("missing.yaml");
    assert!(matches!(read_input(&missing), Err(InputError::Read { .. })));
}
