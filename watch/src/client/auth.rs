//! Client credentials: bearer tokens read from a private token file and attached to calls,
//! and the CA a TLS connection to the server is verified with.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Environment variable naming the token file when `--token-file` is not given.
pub const TOKEN_FILE_ENV: &str = "CONVERGE_TOKEN_FILE";

/// gRPC metadata key the token travels in.
pub const AUTHORIZATION_METADATA: &str = "authorization";

/// Shortest token accepted: shorter ones are too easy to guess.
pub const MIN_TOKEN_LEN: usize = 16;

/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Environment variable naming the CA file when `--tls-ca` is not given.
pub const TLS_CA_ENV: &str = "CONVERGE_TLS_CA";

/// Why a token, token file or CA file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The CA file could not be read.
    #[error("cannot read the TLS CA file {}", path.display())]
    ReadCa {
        /// The CA file.
        path: PathBuf,
        /// The system's complaint.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error("TLS CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NotPem {
        /// The CA file.
        path: PathBuf,
    },
    /// The file could not be opened, inspected or read.
    #[error("cannot read the token file {}", path.display())]
    Read {
        /// The token file.
        path: PathBuf,
        /// The system's complaint.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a regular file.
    #[error("token file {} is not a regular file", path.display())]
    NotAFile {
        /// The token file.
        path: PathBuf,
    },
    /// Group or others may access the file; a token everyone can read protects nothing.
    #[error(
        "token file {} is accessible by group or others (mode {mode:04o}); make it private with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token (after trimming surrounding whitespace) is unusable.
    #[error("{source_name}: {reason}")]
    Malformed {
        /// Where the token came from (a file path or `token`).
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A bearer token: visible ASCII, [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] bytes. Its `Debug`
/// output never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Checks `token` (surrounding whitespace is trimmed); fails with
    /// [`CredentialError::Malformed`] when it is too short, too long or holds anything but
    /// visible ASCII.
    pub fn new(token: &str) -> Result<Self, CredentialError> {
        Self::checked(token, "token")
    }

    fn checked(token: &str, source_name: &str) -> Result<Self, CredentialError> {
        let token = token.trim();
        let malformed = |reason: String| CredentialError::Malformed {
            source_name: source_name.to_string(),
            reason,
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(malformed(format!(
                "the token is {} bytes; at least {MIN_TOKEN_LEN} are required (e.g. `head -c 32 /dev/urandom | base64`)",
                token.len()
            )));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed(format!(
                "the token is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed(
                "the token may hold only visible ASCII characters (no spaces)".to_string(),
            ));
        }
        Ok(Self(token.to_string()))
    }

    /// Reads the token from `path`. Refuses, changing nothing, a file that is not a regular
    /// file, that group or others may access (any of mode `0077`), or whose content is not a
    /// valid token; every error names the file.
    pub fn from_file(path: &Path) -> Result<Self, CredentialError> {
        let read_err = |source| CredentialError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        // Inspect the opened file, not the path, so the check and the read see one file.
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(CredentialError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CredentialError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        (&mut file)
            .take(MAX_TOKEN_LEN as u64 + 64)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        Self::checked(&text, &format!("token file {}", path.display()))
    }

    /// The secret itself, for comparing or sending.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `authorization` header value carrying this token, marked sensitive.
    fn header(&self) -> Option<AsciiMetadataValue> {
        let mut value = MetadataValue::try_from(format!("Bearer {}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// How a client verifies a TLS server: the CA certificate(s) that signed the server's
/// certificate, and the name the certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM of the trusted CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// Name checked against the server certificate; `None`: the host of the first TCP
    /// address (`localhost` when there is none).
    pub domain: Option<String>,
}

impl ClientTls {
    /// Trusts the CA certificate(s) in the PEM file at `path`; fails, naming the file, when
    /// it cannot be read or holds no PEM certificate.
    pub fn from_ca_file(path: &Path) -> Result<Self, CredentialError> {
        let ca_pem = std::fs::read(path).map_err(|source| CredentialError::ReadCa {
            path: path.to_path_buf(),
            source,
        })?;
        if !ca_pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(CredentialError::NotPem {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            ca_pem,
            domain: None,
        })
    }
}

/// How an [`EntityClient`](super::EntityClient) authenticates itself and the server. The
/// default sends no token and speaks plain HTTP/2, which is all a unix socket needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<BearerToken>,
    /// Speak TLS, verifying the server with this CA.
    pub tls: Option<ClientTls>,
}

impl ClientOptions {
    /// Options that send `token` on every call.
    pub fn with_token(mut self, token: BearerToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Options with the token read from `path` (see [`BearerToken::from_file`]); `None`
    /// gives options without a token.
    pub fn from_token_file(path: Option<&Path>) -> Result<Self, CredentialError> {
        Self::from_files(path, None)
    }

    /// Options with the token read from `token_file` and TLS verified with the CA in
    /// `tls_ca` (see [`ClientTls::from_ca_file`]); each `None` leaves that part out.
    pub fn from_files(
        token_file: Option<&Path>,
        tls_ca: Option<&Path>,
    ) -> Result<Self, CredentialError> {
        Ok(Self {
            token: token_file.map(BearerToken::from_file).transpose()?,
            tls: tls_ca.map(ClientTls::from_ca_file).transpose()?,
        })
    }
}

/// Adds the configured token to every outgoing call; passes calls through without one.
#[derive(Debug, Clone, Default)]
pub struct AttachToken {
    header: Option<AsciiMetadataValue>,
}

impl AttachToken {
    /// Attaches `options.token`, if any.
    pub fn new(options: &ClientOptions) -> Self {
        Self {
            header: options.token.as_ref().and_then(BearerToken::header),
        }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert(AUTHORIZATION_METADATA, header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_token(dir: &Path, mode: u32, text: &str) -> PathBuf {
        let path = dir.join("token");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(text.as_bytes()).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_private_token_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write_token(dir.path(), 0o600, "abcdefghijklmnopqrstuvwxyz\n");
        let token = BearerToken::from_file(&path).expect("valid");
        assert_eq!(token.expose(), "abcdefghijklmnopqrstuvwxyz");
    }

    #[test]
    fn a_group_or_world_readable_token_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        for mode in [0o640, 0o604, 0o644] {
            let path = write_token(dir.path(), mode, "abcdefghijklmnopqrstuvwxyz");
            let err = BearerToken::from_file(&path).expect_err("too open");
            assert!(matches!(err, CredentialError::TooOpen { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(BearerToken::new("short").is_err());
        assert!(BearerToken::new("has a space in the middle of it").is_err());
        assert!(BearerToken::new("  0123456789abcdef  ").is_ok());
    }

    #[test]
    fn a_missing_token_file_names_the_path() {
        let err =
            BearerToken::from_file(Path::new("/nonexistent/converge-token")).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/converge-token"),
            "{err}"
        );
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let token = BearerToken::new("0123456789abcdef-secret").expect("valid");
        let options = ClientOptions::default().with_token(token);
        assert!(!format!("{options:?}").contains("secret"));
    }

    #[test]
    fn the_interceptor_attaches_the_bearer_header() {
        let token = BearerToken::new("0123456789abcdef").expect("valid");
        let mut attach = AttachToken::new(&ClientOptions::default().with_token(token));
        let request = attach.call(Request::new(())).expect("passes");
        let header = request
            .metadata()
            .get(AUTHORIZATION_METADATA)
            .expect("header");
        assert_eq!(header.to_str().expect("ascii"), "Bearer 0123456789abcdef");
    }
}
