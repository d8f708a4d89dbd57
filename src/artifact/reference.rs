//! Image references given to `converge artifact import --name REF`: which repository and
//! tag of the cluster registry they name, and the artifact entity name derived from them.

use std::fmt;

use converge_watch::entity::is_valid_name;

use crate::registry::{NameError, RepoName, Tag};

/// Registry host under which image references name images of the artifact registry.
pub const CLUSTER_REGISTRY: &str = "cluster.local:5000";

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// The reference names another registry.
    #[error(
        "image reference {reference:?} names registry {host:?}; import pushes to the cluster registry: use {CLUSTER_REGISTRY}/NAME:TAG or NAME:TAG"
    )]
    ForeignRegistry {
        /// The reference as given.
        reference: String,
        /// The registry host it names.
        host: String,
    },
    /// The reference pins a digest; import needs a tag to publish under.
    #[error("image reference {0:?} pins a digest; give a tag instead (NAME:TAG)")]
    DigestReference(String),
    /// The repository or tag part breaks the distribution grammar.
    #[error("image reference {reference:?}: {source}")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        #[source]
        source: NameError,
    },
    /// No valid entity name could be derived; `--id` must be given.
    #[error("cannot derive an artifact name from {0:?}; pass --id NAME")]
    NoEntityName(String),
}

/// True when the first path component of a reference is a registry host, as Docker decides:
/// it contains `.` or `:` or is `localhost`, and (here) starts with a letter or digit.
fn looks_like_host(first: &str) -> bool {
    first.starts_with(|c: char| c.is_ascii_alphanumeric())
        && (first.contains('.') || first.contains(':') || first == "localhost")
}

/// A tagged image in the cluster registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository inside the registry, e.g. `demo` or `team/app`.
    pub repository: RepoName,
    /// Tag, `latest` when the reference has none.
    pub tag: Tag,
}

impl ImageRef {
    /// Parses `cluster.local:5000/NAME[:TAG]` or `NAME[:TAG]`. Fails on another registry
    /// host, on a digest reference, and on names or tags outside the distribution grammar.
    pub fn parse(reference: &str) -> Result<Self, RefError> {
        if reference.contains('@') {
            return Err(RefError::DigestReference(reference.to_string()));
        }
        let invalid = |source| RefError::Invalid {
            reference: reference.to_string(),
            source,
        };
        let rest = match reference.split_once('/') {
            Some((host, rest)) if looks_like_host(host) => {
                if host != CLUSTER_REGISTRY {
                    return Err(RefError::ForeignRegistry {
                        reference: reference.to_string(),
                        host: host.to_string(),
                    });
                }
                rest
            }
            _ => reference,
        };
        // A tag follows the last ':' after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], &rest[last_slash + i + 1..]),
            None => (rest, "latest"),
        };
        Ok(Self {
            repository: name.parse().map_err(invalid)?,
            tag: tag.parse().map_err(invalid)?,
        })
    }

    /// The artifact entity name derived from it: `demo:v1` → `demo-v1`, `team/app:1.0` →
    /// `team-app-1-0`. Fails when nothing valid remains (then the caller needs `--id`).
    pub fn entity_name(&self) -> Result<String, RefError> {
        let raw = format!("{}-{}", self.repository, self.tag).to_ascii_lowercase();
        let mut name = String::with_capacity(raw.len());
        for c in raw.chars() {
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            };
            if !(c == '-' && name.ends_with('-')) {
                name.push(c);
            }
        }
        let mut name = name.trim_matches('-').to_string();
        name.truncate(63);
        let name = name.trim_end_matches('-').to_string();
        if is_valid_name(&name) {
            Ok(name)
        } else {
            Err(RefError::NoEntityName(self.to_string()))
        }
    }
}

impl fmt::Display for ImageRef {
    /// The full reference as stored in the artifact entity: `cluster.local:5000/NAME:TAG`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CLUSTER_REGISTRY}/{}:{}", self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_full_references_name_the_same_image() {
        let a = ImageRef::parse("demo:v1").expect("short");
        let b = ImageRef::parse("cluster.local:5000/demo:v1").expect("full");
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "cluster.local:5000/demo:v1");
        assert_eq!(a.entity_name().expect("name"), "demo-v1");
        let c = ImageRef::parse("team/app").expect("untagged");
        assert_eq!(c.tag.as_str(), "latest");
        assert_eq!(
            ImageRef::parse("team/app:1.0_RC")
                .expect("ref")
                .entity_name()
                .expect("name"),
            "team-app-1-0-rc"
        );
    }

    #[test]
    fn foreign_registries_digests_and_bad_names_are_refused() {
        assert!(matches!(
            ImageRef::parse("docker.io/library/busybox:1"),
            Err(RefError::ForeignRegistry { .. })
        ));
        assert!(matches!(
            ImageRef::parse("demo@sha256:abc"),
            Err(RefError::DigestReference(_))
        ));
        assert!(matches!(
            ImageRef::parse("Demo:v1"),
            Err(RefError::Invalid { .. })
        ));
        assert!(matches!(
            ImageRef::parse("../x:v1"),
            Err(RefError::Invalid { .. })
        ));
    }
}
