//! What content an image record keeps in containerd (manifest or index, child manifests, configs, layers) with sizes, so GC can report the bytes a deletion frees.

use std::collections::HashMap;

use serde_json::Value;

use crate::containerd::{ContainerdClient, ContainerdError, Descriptor};

/// Deepest index nesting followed.
const MAX_DEPTH: usize = 4;

/// The blobs `target` keeps alive, digest to size: itself, and when it is a manifest its
/// config and layers, when an index its child manifests (those present) recursively.
/// Fails only when containerd cannot be read; a child that is absent is skipped.
pub(crate) async fn image_blobs(
    client: &ContainerdClient,
    target: &Descriptor,
) -> Result<HashMap<String, u64>, ContainerdError> {
    let mut out = HashMap::new();
    let mut stack = vec![(target.digest.clone(), target.size, 0usize)];
    while let Some((digest, size, depth)) = stack.pop() {
        if out.insert(digest.clone(), size).is_some() {
            continue;
        }
        let bytes = match client.read_content(&digest).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        for d in doc.get("config").into_iter().chain(array(&doc, "layers")) {
            if let Some((digest, size)) = descriptor(d) {
                out.insert(digest, size);
            }
        }
        if depth < MAX_DEPTH {
            for d in array(&doc, "manifests") {
                if let Some((digest, size)) = descriptor(d) {
                    stack.push((digest, size, depth + 1));
                }
            }
        }
    }
    Ok(out)
}

fn array<'a>(doc: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    doc.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn descriptor(d: &Value) -> Option<(String, u64)> {
    let digest = d.get("digest")?.as_str()?.to_string();
    let size = d.get("size").and_then(Value::as_u64).unwrap_or(0);
    Some((digest, size))
}
