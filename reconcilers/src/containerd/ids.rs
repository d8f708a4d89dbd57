//! Deterministic containerd ids for converge's containers, containerd's identifier rules, and our labels.

use converge_watch::entity::EntityId;
use sha2::{Digest, Sha256};

/// Label on every containerd object converge owns: the owning entity id (Contract).
pub const LABEL_ENTITY_ID: &str = "runtime.computer/entity-id";
/// Label on containers: the container's name within its sandbox.
pub const LABEL_CONTAINER_NAME: &str = "runtime.computer/container-name";
/// Label on containers: the sandbox revision the container was created from.
pub const LABEL_SANDBOX_REVISION: &str = "runtime.computer/sandbox-revision";
/// containerd's maximum identifier length.
pub const MAX_IDENTIFIER_LEN: usize = 76;

/// True when `s` satisfies containerd's identifier rules: 1-76 characters, runs of ASCII
/// letters and digits separated by single `.`, `_` or `-`.
pub fn is_valid_identifier(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_IDENTIFIER_LEN {
        return false;
    }
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    let b = s.as_bytes();
    if sep(b[0]) || sep(b[b.len() - 1]) {
        return false;
    }
    b.iter().all(|&c| c.is_ascii_alphanumeric() || sep(c))
        && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]))
}

/// The containerd container id of container `container` of entity `owner`:
/// `<kind>.<name>.<container>` (e.g. `sandbox.web.app`) when that is a valid identifier,
/// otherwise a shortened, sanitized prefix plus `.` and 16 hex digits of a hash of the
/// full form. Always a valid identifier; the same inputs always give the same id and
/// different inputs give different ids (up to hash collisions).
pub fn container_id(owner: &EntityId, container: &str) -> String {
    let full = format!("{}.{}.{}", owner.kind(), owner.name(), container);
    if is_valid_identifier(&full) {
        return full;
    }
    let hash = hex::encode(Sha256::digest(full.as_bytes()));
    let mut prefix = String::with_capacity(full.len());
    let mut last_was_sep = true;
    for c in full.chars() {
        if c.is_ascii_alphanumeric() {
            prefix.push(c);
            last_was_sep = false;
        } else if !last_was_sep {
            prefix.push('.');
            last_was_sep = true;
        }
    }
    prefix.truncate(MAX_IDENTIFIER_LEN - 17);
    let prefix = prefix.trim_end_matches('.');
    if prefix.is_empty() {
        format!("c.{}", &hash[..16])
    } else {
        format!("{prefix}.{}", &hash[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_watch::entity::Kind;

    fn sandbox(name: &str) -> EntityId {
        EntityId::new(Kind::Sandbox, name).expect("valid name")
    }

    #[test]
    fn simple_names_give_readable_ids() {
        assert_eq!(container_id(&sandbox("web"), "app"), "sandbox.web.app");
    }

    #[test]
    fn ids_are_always_valid_and_distinct_even_for_long_or_dashed_names() {
        let long = "a".repeat(63);
        let cases = [
            container_id(&sandbox(&long), &long),
            container_id(&sandbox("a--b"), "app"),
            container_id(&sandbox("a-b"), "app"),
            container_id(&sandbox(&long), &format!("{}b", "a".repeat(62))),
        ];
        for id in &cases {
            assert!(is_valid_identifier(id), "{id}");
        }
        for (i, a) in cases.iter().enumerate() {
            for b in &cases[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            cases[0],
            container_id(&sandbox(&long), &long),
            "deterministic"
        );
    }

    #[test]
    fn identifier_rules_match_containerd() {
        assert!(is_valid_identifier("converge"));
        assert!(is_valid_identifier("a.b_c-d"));
        assert!(!is_valid_identifier("a--b"));
        assert!(!is_valid_identifier("-a"));
        assert!(!is_valid_identifier("a/b"));
        assert!(!is_valid_identifier(&"a".repeat(77)));
    }
}
