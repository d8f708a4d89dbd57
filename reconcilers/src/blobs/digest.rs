//! A validated `sha256:<64 lowercase hex>` digest: the only thing blob GC ever turns into a path.

use std::fmt;
use std::str::FromStr;

/// A digest that is exactly `sha256:` and 64 lowercase hex digits, so its hex is a safe
/// file name (no `/`, no `..`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobDigest(String);

/// A string that is not a valid sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not sha256:<64 lowercase hex>")]
pub struct BlobDigestError(pub String);

fn is_hex64(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobDigest {
    /// The digest whose store file name is `hex`; fails unless `hex` is 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, BlobDigestError> {
        if is_hex64(hex) {
            Ok(Self(format!("sha256:{hex}")))
        } else {
            Err(BlobDigestError(hex.to_string()))
        }
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl FromStr for BlobDigest {
    type Err = BlobDigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(h) if is_hex64(h) => Ok(Self(s.to_string())),
            _ => Err(BlobDigestError(s.to_string())),
        }
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_lowercase_hex_digits_make_a_digest() {
        let hex = "a".repeat(64);
        assert_eq!(BlobDigest::from_hex(&hex).expect("ok").hex(), hex);
        for bad in [
            "..",
            "../etc/passwd",
            &"a".repeat(63),
            &"A".repeat(64),
            &format!("{}/", "a".repeat(63)),
            "",
        ] {
            assert!(BlobDigest::from_hex(bad).is_err(), "{bad:?}");
        }
        assert!(format!("sha256:{hex}").parse::<BlobDigest>().is_ok());
        assert!(format!("sha512:{hex}").parse::<BlobDigest>().is_err());
    }
}
