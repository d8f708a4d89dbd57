//! What content an image record keeps in containerd (manifest or index, child manifests, configs, layers) with sizes, so GC can report the bytes a deletion frees.

use std::collections::HashMap;

use serde_json::Value;

use crate::containerd::{ContainerdClient, ContainerdError, Descriptor};

/// Content reference counts across all image records, to tell what a deletion frees.
#[derive(Debug, Default)]
pub(crate) struct ContentRefs {
    per_image: HashMap<String, HashMap<String, u64>>,
    refs: HashMap<String, usize>,
}

impl ContentRefs {
    pub(crate) fn add(&mut self, image: &str, blobs: HashMap<String, u64>) {
        for digest in blobs.keys() {
            *self.refs.entry(digest.clone()).or_default() += 1;
        }
        self.per_image.insert(image.to_string(), blobs);
    }

    /// Bytes that deleting `image` would free (content no other image record shares).
    pub(crate) fn freed_by(&self, image: &str) -> u64 {
        self.per_image.get(image).map_or(0, |blobs| {
            blobs
                .iter()
                .filter(|(d, _)| self.refs.get(*d).copied().unwrap_or(0) <= 1)
                .map(|(_, s)| *s)
                .sum()
        })
    }

    pub(crate) fn remove(&mut self, image: &str) {
        if let Some(blobs) = self.per_image.remove(image) {
            for d in blobs.keys() {
                if let Some(n) = self.refs.get_mut(d) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }
}

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
