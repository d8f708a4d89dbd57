//! Image references the puller understands: `HOST/NAME:TAG` and `HOST/NAME@sha256:<hex>`,
//! checked strictly enough that every part is safe inside a registry URL path.

use std::fmt;

use crate::containerd::is_valid_sha256_digest;

/// Why a reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The reference as given.
    pub reference: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// What a reference pins: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pin {
    /// A mutable tag.
    Tag(String),
    /// An immutable manifest digest.
    Digest(String),
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// Registry host (with port), e.g. `cluster.local:5000`.
    pub host: String,
    /// Repository path, e.g. `demo` or `team/app`.
    pub repository: String,
    /// Tag or digest; a reference without either means tag `latest`.
    pub pin: Pin,
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&x| alnum(x) || matches!(x, b'.' | b'_' | b'-'))
}

fn tag_ok(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

impl ImageReference {
    /// Parses `HOST/NAME[:TAG]` or `HOST/NAME@sha256:<hex>`. The host part is required (it
    /// must contain `.` or `:`, or be `localhost`); repository components follow the
    /// distribution grammar's alphabet; tags and digests are validated.
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        let err = |reason| ReferenceError {
            reference: reference.to_string(),
            reason,
        };
        let (host, rest) = reference
            .split_once('/')
            .ok_or_else(|| err("no registry host"))?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(err("no registry host"));
        }
        let (name, pin) = if let Some((name, digest)) = rest.split_once('@') {
            if !is_valid_sha256_digest(digest) {
                return Err(err("digest must be sha256:<64 lowercase hex>"));
            }
            (name, Pin::Digest(digest.to_string()))
        } else {
            let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[last_slash..].rfind(':') {
                Some(i) => {
                    let tag = &rest[last_slash + i + 1..];
                    if !tag_ok(tag) {
                        return Err(err("invalid tag"));
                    }
                    (&rest[..last_slash + i], Pin::Tag(tag.to_string()))
                }
                None => (rest, Pin::Tag("latest".to_string())),
            }
        };
        if name.len() > 255 || !name.split('/').all(component_ok) {
            return Err(err("invalid repository name"));
        }
        Ok(Self {
            host: host.to_string(),
            repository: name.to_string(),
            pin,
        })
    }

    /// The tag or digest as it appears in a manifest URL.
    pub fn pin_str(&self) -> &str {
        match &self.pin {
            Pin::Tag(t) | Pin::Digest(t) => t,
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pin {
            Pin::Tag(t) => write!(f, "{}/{}:{t}", self.host, self.repository),
            Pin::Digest(d) => write!(f, "{}/{}@{d}", self.host, self.repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_digests_and_defaults_are_understood() {
        let r = ImageReference::parse("cluster.local:5000/team/app:v1").expect("tag");
        assert_eq!(r.host, "cluster.local:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.pin, Pin::Tag("v1".into()));
        let r = ImageReference::parse("cluster.local:5000/demo").expect("default");
        assert_eq!(r.pin, Pin::Tag("latest".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageReference::parse(&format!("cluster.local:5000/demo@{d}")).expect("digest");
        assert_eq!(r.pin, Pin::Digest(d));
    }

    #[test]
    fn references_that_could_bend_a_url_are_refused() {
        for bad in [
            "demo:v1",
            "cluster.local:5000/../x:v1",
            "cluster.local:5000/a/../../b",
            "cluster.local:5000/demo:v1?x=1",
            "cluster.local:5000/demo@sha256:zz",
            "cluster.local:5000/Demo:v1",
            "cluster.local:5000/demo:v1#frag",
        ] {
            assert!(ImageReference::parse(bad).is_err(), "{bad}");
        }
    }
}
