//! Parsing and local validation of `apply` input: JSON or YAML, one entity or many.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use converge_watch::{Entity, EntityId, Kind, validate};
use serde::Deserialize;
use serde_json::Value;

/// Largest input `apply` reads (the server refuses any single entity over 1 MiB anyway).
pub const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Top-level fields an item may carry. Server-kept ones are accepted and ignored, so the
/// output of `get -o json|yaml` can be applied again.
const ALLOWED_FIELDS: [&str; 9] = [
    "id",
    "kind",
    "name",
    "spec",
    "status",
    "revision",
    "create_revision",
    "created_at",
    "updated_at",
];

/// One entity to apply, parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyItem {
    /// Position in the input, counting from 1 across lists and documents.
    pub index: usize,
    /// The entity's id.
    pub id: EntityId,
    /// Its desired state.
    pub spec: Value,
}

/// Why `apply` input was refused. Nothing is applied when any of these occurs.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file or stdin could not be read.
    #[error("cannot read {source_name}")]
    Read {
        /// The file name, or `stdin`.
        source_name: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The input is larger than [`MAX_INPUT_BYTES`].
    #[error("{source_name} is larger than the limit of {MAX_INPUT_BYTES} bytes")]
    TooLarge {
        /// The file name, or `stdin`.
        source_name: String,
    },
    /// The input looks like JSON but does not parse.
    #[error("invalid JSON")]
    Json(#[source] serde_json::Error),
    /// A YAML document does not parse.
    #[error("invalid YAML in document {document}")]
    Yaml {
        /// 1-based number of the document in a `---` stream.
        document: usize,
        /// The parser's complaint, with line and column.
        #[source]
        source: serde_yaml::Error,
    },
    /// The input holds no entity at all.
    #[error("no entities found in the input")]
    Empty,
    /// One item is malformed or invalid.
    #[error("item {index}{}: {field}: {message}", id.as_ref().map(|i| format!(" ({i})")).unwrap_or_default())]
    Item {
        /// 1-based position of the item.
        index: usize,
        /// Its id, when one could be read.
        id: Option<String>,
        /// Path of the offending field, such as `spec.containers[0].image`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The same id appears twice.
    #[error("item {second} ({id}): duplicate id, already given by item {first}")]
    Duplicate {
        /// The repeated id.
        id: String,
        /// Index of its first occurrence.
        first: usize,
        /// Index of the repetition.
        second: usize,
    },
}

/// Reads `apply` input from a file, or from stdin when `path` is `-`. Fails on I/O errors,
/// on input that is not UTF-8, and on input over [`MAX_INPUT_BYTES`].
pub fn read_input(path: &Path) -> Result<String, InputError> {
    let is_stdin = path == Path::new("-");
    let source_name = if is_stdin {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    let read_err = |source| InputError::Read {
        source_name: source_name.clone(),
        source,
    };
    let mut reader: Box<dyn Read> = if is_stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(PathBuf::from(path)).map_err(read_err)?)
    };
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(InputError::TooLarge { source_name });
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.utf8_error(),
        ))
    })
}

/// Parses `text` (JSON if it starts with `{` or `[`, YAML otherwise) into entities and
/// validates each one as the server would. Accepts one entity, a list, `{"items": [...]}`,
/// several concatenated JSON values or a `---` separated YAML stream. Each item needs `id`
/// (or `kind` and `name`) and `spec`; `status`, revisions and timestamps are ignored.
/// Returns the first problem found, naming the item and the field; never panics.
pub fn parse_items(text: &str) -> Result<Vec<ApplyItem>, InputError> {
    let documents = parse_documents(text)?;
    let mut raw = Vec::new();
    for doc in documents {
        flatten(doc, &mut raw)?;
    }
    if raw.is_empty() {
        return Err(InputError::Empty);
    }
    let mut seen: HashMap<EntityId, usize> = HashMap::new();
    let mut items = Vec::with_capacity(raw.len());
    for (i, value) in raw.into_iter().enumerate() {
        let item = to_item(i + 1, value)?;
        if let Some(&first) = seen.get(&item.id) {
            return Err(InputError::Duplicate {
                id: item.id.to_string(),
                first,
                second: item.index,
            });
        }
        seen.insert(item.id.clone(), item.index);
        items.push(item);
    }
    Ok(items)
}

fn parse_documents(text: &str) -> Result<Vec<Value>, InputError> {
    let trimmed = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return serde_json::Deserializer::from_str(trimmed)
            .into_iter::<Value>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(InputError::Json);
    }
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| InputError::Yaml {
            document: i + 1,
            source,
        })?;
        docs.push(value);
    }
    Ok(docs)
}

/// Adds the entities of one document to `out`: lists and `{"items": [...]}` are expanded,
/// empty documents skipped; anything else is kept as one item for `to_item` to judge.
fn flatten(doc: Value, out: &mut Vec<Value>) -> Result<(), InputError> {
    match doc {
        Value::Null => Ok(()),
        Value::Array(list) => {
            out.extend(list);
            Ok(())
        }
        Value::Object(mut map) if map.contains_key("items") && !map.contains_key("spec") => {
            let Some(items) = map.remove("items") else {
                return Ok(());
            };
            let Value::Array(list) = items else {
                return Err(InputError::Item {
                    index: out.len() + 1,
                    id: None,
                    field: "items".into(),
                    message: format!("must be a list, found {}", type_name(&items)),
                });
            };
            out.extend(list);
            Ok(())
        }
        other => {
            out.push(other);
            Ok(())
        }
    }
}

fn to_item(index: usize, value: Value) -> Result<ApplyItem, InputError> {
    let err = |id: Option<&EntityId>, field: &str, message: String| InputError::Item {
        index,
        id: id.map(ToString::to_string),
        field: field.to_string(),
        message,
    };
    let Value::Object(mut obj) = value else {
        return Err(err(
            None,
            "item",
            format!(
                "must be an object with \"id\" and \"spec\", found {}",
                type_name(&value)
            ),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !ALLOWED_FIELDS.contains(&k.as_str())) {
        return Err(err(
            None,
            unknown,
            "unknown field; an item has id (or kind and name) and spec".to_string(),
        ));
    }
    let text_field = |field: &str| -> Result<Option<&str>, InputError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(err(
                None,
                field,
                format!("must be a string, found {}", type_name(other)),
            )),
        }
    };
    let (id_text, kind_text, name_text) =
        (text_field("id")?, text_field("kind")?, text_field("name")?);
    let kind = kind_text
        .map(|k| {
            k.parse::<Kind>()
                .map_err(|e| err(None, "kind", e.to_string()))
        })
        .transpose()?;
    let id = match (id_text, kind, name_text) {
        (Some(text), _, _) => text
            .parse::<EntityId>()
            .map_err(|e| err(None, "id", e.to_string()))?,
        (None, Some(kind), Some(name)) => {
            EntityId::new(kind, name).map_err(|e| err(None, "name", e.to_string()))?
        }
        (None, None, _) => return Err(err(None, "id", "is required (or kind and name)".into())),
        (None, Some(_), None) => return Err(err(None, "name", "is required with kind".into())),
    };
    if let Some(kind) = kind
        && kind != id.kind()
    {
        return Err(err(
            Some(&id),
            "kind",
            format!("{kind} does not match the id"),
        ));
    }
    if let Some(name) = name_text
        && name != id.name()
    {
        return Err(err(
            Some(&id),
            "name",
            format!("{name:?} does not match the id"),
        ));
    }
    let spec = match obj.remove("spec") {
        None | Some(Value::Null) => return Err(err(Some(&id), "spec", "is required".into())),
        Some(spec) => spec,
    };
    let entity = Entity::new(id, spec);
    validate(&entity).map_err(|e| err(Some(&entity.id), &e.field, e.message))?;
    Ok(ApplyItem {
        index,
        id: entity.id,
        spec: entity.spec,
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
