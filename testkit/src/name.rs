//! Unique names for objects tests create, so tests can run in parallel against shared resources.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Returns `prefix-<pid>-<nanos>-<counter>`: lowercase, digits and `-` only (when `prefix` is),
/// valid as an entity name, a containerd id or namespace, and never repeated within a process.
/// Long prefixes are cut so that the result stays within 40 characters.
pub fn unique_name(prefix: &str) -> String {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let suffix = format!("{:x}-{:x}-{count}", std::process::id(), nanos);
    let room = 40usize.saturating_sub(suffix.len() + 1);
    let prefix: String = prefix.chars().take(room).collect();
    let prefix = prefix.trim_end_matches('-');
    if prefix.is_empty() {
        format!("t-{suffix}")
    } else {
        format!("{prefix}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_never_repeat_and_keep_their_prefix() {
        let a = unique_name("web");
        let b = unique_name("web");
        assert_ne!(a, b);
        assert!(a.starts_with("web-"));
        assert!(unique_name(&"x".repeat(100)).len() <= 40);
    }
}
