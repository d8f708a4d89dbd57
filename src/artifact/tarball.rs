//! Random access into an uncompressed tar file: an index of its regular files (offset and
//! size inside the tar) so blobs can be hashed and streamed without unpacking anything.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::registry::Digest;

/// Longest chain of symlinks followed when looking a member up.
const MAX_LINK_DEPTH: usize = 8;

/// Failures reading a tar file.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The tar file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable tar archive (corrupt or truncated).
    #[error("{path} is not a valid tar archive: {source}")]
    Corrupt {
        /// The tar file.
        path: PathBuf,
        /// What the tar reader found.
        #[source]
        source: std::io::Error,
    },
    /// The file is compressed; only plain tars are accepted.
    #[error("{0} is compressed; decompress it first (e.g. gunzip) and import the plain tar")]
    Compressed(PathBuf),
    /// A member the image needs is not in the archive.
    #[error("{member} is not in the archive")]
    Missing {
        /// The member path.
        member: String,
    },
}

/// Where one member's bytes lie inside the tar file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

#[derive(Debug, Clone)]
enum Entry {
    File(Member),
    Link(String),
}

/// An indexed tar file. Blocking: call it from `spawn_blocking`.
#[derive(Debug)]
pub struct Tarball {
    path: PathBuf,
    file: File,
    entries: HashMap<String, Entry>,
}

/// `./a/b/../c` → `a/c`; `None` if it climbs above the root.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl Tarball {
    /// Reads the tar headers of `path` and indexes its regular files and symlinks.
    /// Fails with [`TarballError::Compressed`] for gzip/zstd input and
    /// [`TarballError::Corrupt`] when the headers cannot be parsed.
    pub fn open(path: &Path) -> Result<Self, TarballError> {
        let io = |source| TarballError::Io {
            path: path.to_path_buf(),
            source,
        };
        let corrupt = |source| TarballError::Corrupt {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(io)?;
        if n >= 2 && (magic[..2] == [0x1f, 0x8b] || magic == [0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(TarballError::Compressed(path.to_path_buf()));
        }
        let len = file.metadata().map_err(io)?.len();
        let reader = File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(reader);
        let mut entries = HashMap::new();
        for entry in archive.entries_with_seek().map_err(corrupt)? {
            let entry = entry.map_err(corrupt)?;
            let name = entry
                .path()
                .map_err(corrupt)?
                .to_string_lossy()
                .into_owned();
            let Some(name) = normalize(&name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                let member = Member {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                };
                if member.offset.saturating_add(member.size) > len {
                    return Err(corrupt(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("member {name} is truncated"),
                    )));
                }
                entries.insert(name, Entry::File(member));
            } else if (kind.is_symlink() || kind.is_hard_link())
                && let Some(target) = entry.link_name().map_err(corrupt)?
            {
                let target = target.to_string_lossy().into_owned();
                let resolved = if kind.is_symlink() {
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    normalize(&format!("{dir}/{target}"))
                } else {
                    normalize(&target)
                };
                if let Some(resolved) = resolved {
                    entries.insert(name, Entry::Link(resolved));
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    /// The tar file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where member `name` lies, following links; `None` if it is absent.
    pub fn member(&self, name: &str) -> Option<Member> {
        let mut name = normalize(name)?;
        for _ in 0..MAX_LINK_DEPTH {
            match self.entries.get(&name)? {
                Entry::File(m) => return Some(*m),
                Entry::Link(target) => name = target.clone(),
            }
        }
        None
    }

    /// Like [`Tarball::member`] but an absent member is [`TarballError::Missing`].
    pub fn require(&self, name: &str) -> Result<Member, TarballError> {
        self.member(name).ok_or_else(|| TarballError::Missing {
            member: name.to_string(),
        })
    }

    /// Reads `len` bytes at `offset` of the tar file.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, TarballError> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| TarballError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// Reads a whole member into memory.
    pub fn read_member(&self, member: Member) -> Result<Vec<u8>, TarballError> {
        self.read_at(member.offset, member.size as usize)
    }

    /// The sha256 digest of a member's bytes, and whether they start with the gzip magic.
    pub fn digest_member(&self, member: Member) -> Result<(Digest, bool), TarballError> {
        let mut hasher = Sha256::new();
        let mut offset = member.offset;
        let end = member.offset + member.size;
        let mut gzip = false;
        while offset < end {
            let chunk = self.read_at(offset, (end - offset).min(1 << 20) as usize)?;
            if offset == member.offset {
                gzip = chunk.starts_with(&[0x1f, 0x8b]);
            }
            hasher.update(&chunk);
            offset += chunk.len() as u64;
        }
        Ok((Digest::from_hasher(hasher), gzip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_never_climb_out() {
        assert_eq!(normalize("./a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalize("../etc/passwd"), None);
    }
}
