//! TLS for the entity server's TCP listener: its certificate and private key from PEM files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tonic::transport::{Identity, ServerTlsConfig};

/// Why the TLS settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read the TLS {what} {}", path.display())]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's complaint.
        #[source]
        source: std::io::Error,
    },
    /// The private key file is accessible by group or others.
    #[error(
        "TLS key {} is accessible by group or others (mode {mode:04o}); make it private with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file does not hold the expected PEM block.
    #[error("TLS {what} {} holds no PEM block ({marker})", path.display())]
    NotPem {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The marker looked for.
        marker: &'static str,
    },
}

/// The server's TLS identity: certificate chain and private key, as PEM.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls { key: <redacted> }")
    }
}

impl ServerTls {
    /// Reads the certificate chain from `cert` and the private key from `key`. Refuses,
    /// naming the file, one that cannot be read, that holds no PEM block, or a key file
    /// group or others may access. Whether the key matches the certificate is checked
    /// when the server starts (see [`ServerTls::config`] and `serve_bound_secure`).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let key_file = std::fs::File::open(key).map_err(|source| TlsError::Read {
            what: "key",
            path: key.to_path_buf(),
            source,
        })?;
        let meta = key_file.metadata().map_err(|source| TlsError::Read {
            what: "key",
            path: key.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyTooOpen {
                path: key.to_path_buf(),
                mode,
            });
        }
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("key", key)?;
        require_pem(
            "certificate",
            cert,
            &cert_pem,
            "-----BEGIN CERTIFICATE-----",
        )?;
        require_pem("key", key, &key_pem, "PRIVATE KEY-----")?;
        Ok(Self { cert_pem, key_pem })
    }

    /// Builds a TLS identity from PEM already in memory (tests, embedding).
    pub fn from_pem(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// The certificate chain, as PEM (for servers other than tonic's, e.g. the registry).
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The private key, as PEM; never logged.
    pub(crate) fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    /// tonic's server TLS configuration for this identity (no client certificates asked).
    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

fn require_pem(
    what: &'static str,
    path: &Path,
    pem: &[u8],
    marker: &'static str,
) -> Result<(), TlsError> {
    if pem.windows(marker.len()).any(|w| w == marker.as_bytes()) {
        Ok(())
    } else {
        Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            marker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_open_to_others_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").expect("write");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ServerTls::from_files(&cert, &key).expect_err("open key");
        assert!(matches!(err, TlsError::KeyTooOpen { .. }), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        ServerTls::from_files(&cert, &key).expect("private key");
    }

    #[test]
    fn a_file_without_pem_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not a certificate").expect("write");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = ServerTls::from_files(&cert, &key).expect_err("no pem");
        assert!(err.to_string().contains("cert.pem"), "{err}");
    }
}
