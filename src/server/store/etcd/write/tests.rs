//! Tests of how a put batch is planned against what was read, before any transaction.

use serde_json::json;

use super::*;

fn id(name: &str) -> EntityId {
    format!("sandbox/{name}").parse().expect("id")
}

fn op(id: &EntityId, image: &str, expected: Option<i64>) -> PutOp {
    PutOp {
        id: id.clone(),
        spec: json!({"image": image}),
        expected_revision: expected,
    }
}

fn stored(id: &EntityId, image: &str, revision: i64) -> Entity {
    let mut entity = Entity::new(id.clone(), json!({"image": image}));
    entity.revision = revision;
    entity.create_revision = revision;
    entity
}

#[test]
fn the_same_entity_twice_in_a_batch_becomes_one_put_of_its_last_spec() {
    let a = id("a");
    let keys = vec!["/c/entities/sandbox/a".to_string()];
    let ops = [op(&a, "one", None), op(&a, "two", None)];
    let (slots, outputs) = plan(&[&a], &keys, vec![None], &ops).expect("plan");
    assert_eq!(slots.len(), 1);
    assert!(slots[0].changed);
    assert_eq!(outputs, [0, 0]);
    let last = slots[0].current.as_ref().expect("planned");
    assert_eq!(last.spec, json!({"image": "two"}));
}

#[test]
fn a_conditional_op_on_an_entity_changed_earlier_in_the_batch_conflicts() {
    let a = id("a");
    let keys = vec!["/c/entities/sandbox/a".to_string()];
    let ops = [op(&a, "two", None), op(&a, "three", Some(4))];
    let read = vec![Some(stored(&a, "one", 4))];
    match plan(&[&a], &keys, read, &ops) {
        Err(StoreError::Conflict {
            expected: 4,
            current: 4,
            ..
        }) => {}
        other => panic!("wanted Conflict, got {:?}", other.map(|(_, o)| o)),
    }
}

#[test]
fn an_unchanged_spec_plans_no_write_and_keeps_the_stored_entity() {
    let a = id("a");
    let keys = vec!["/c/entities/sandbox/a".to_string()];
    let read = vec![Some(stored(&a, "one", 9))];
    let (slots, _) = plan(&[&a], &keys, read, &[op(&a, "one", Some(9))]).expect("plan");
    assert!(!slots[0].changed);
    assert_eq!(slots[0].current.as_ref().map(|e| e.revision), Some(9));
}

#[test]
fn create_only_on_an_existing_entity_names_its_revision() {
    let a = id("a");
    let keys = vec!["/c/entities/sandbox/a".to_string()];
    let read = vec![Some(stored(&a, "one", 12))];
    match plan(&[&a], &keys, read, &[op(&a, "two", Some(0))]) {
        Err(StoreError::Conflict {
            expected: 0,
            current: 12,
            ..
        }) => {}
        other => panic!("wanted Conflict, got {:?}", other.map(|(_, o)| o)),
    }
}
