//! Bearer-token authentication of the entity server's gRPC API, and the rule deciding
//! whether a listener may run without it.

use std::net::IpAddr;
use std::path::Path;

use converge_watch::ServerAddress;
use converge_watch::client::auth::{AUTHORIZATION_METADATA, BearerToken, CredentialError};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Why the server refuses to start with the authentication it was given.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file is missing, unreadable, too open or holds no valid token.
    #[error(transparent)]
    Token(#[from] CredentialError),
    /// A TCP listener without a token and without `--insecure-no-auth`.
    #[error(
        "refusing to listen on {address} without authentication: give --token-file (or CONVERGE_TOKEN_FILE), or --insecure-no-auth on a loopback address"
    )]
    TokenRequired {
        /// The listen address.
        address: String,
    },
    /// `--insecure-no-auth` on an address other hosts can reach.
    #[error(
        "--insecure-no-auth is allowed only on a loopback address (127.0.0.1, [::1] or localhost), not {address}"
    )]
    InsecureNotLoopback {
        /// The listen address.
        address: String,
    },
}

/// Decides the token a listener on `listen` requires. A unix socket needs none (its mode
/// 0600 is the access control), but a token file given for it is still read and checked.
/// TCP needs the token from `token_file`, unless `insecure_no_auth` is set and the host is
/// loopback. Fails, before anything is opened or bound, when the token file is bad or the
/// rule is broken.
pub fn listener_token(
    listen: &ServerAddress,
    token_file: Option<&Path>,
    insecure_no_auth: bool,
) -> Result<Option<BearerToken>, AuthError> {
    let token = token_file.map(BearerToken::from_file).transpose()?;
    match listen {
        ServerAddress::Unix(_) => Ok(token),
        ServerAddress::Tcp(host_port) => {
            if token.is_some() {
                return Ok(token);
            }
            if !insecure_no_auth {
                return Err(AuthError::TokenRequired {
                    address: listen.to_string(),
                });
            }
            if !is_loopback_host(host_port) {
                return Err(AuthError::InsecureNotLoopback {
                    address: listen.to_string(),
                });
            }
            tracing::warn!(address = %listen, "serving without authentication (--insecure-no-auth)");
            Ok(None)
        }
    }
}

/// True when the host of `HOST:PORT` is a loopback IP or `localhost`.
fn is_loopback_host(host_port: &str) -> bool {
    let Some((host, _port)) = host_port.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A gRPC interceptor that lets a call through only when it carries
/// `authorization: Bearer <token>` with the expected token, compared in constant time (of
/// SHA-256 digests, so not even the length leaks). Anything else is answered with
/// `UNAUTHENTICATED` before the service sees the call, so nothing is read or changed.
#[derive(Clone)]
pub struct RequireBearer {
    expected: Option<[u8; 32]>,
}

impl std::fmt::Debug for RequireBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireBearer")
            .field("required", &self.expected.is_some())
            .finish()
    }
}

impl RequireBearer {
    /// Requires `token` on every call.
    pub fn new(token: &BearerToken) -> Self {
        Self {
            expected: Some(digest(token.expose().as_bytes())),
        }
    }

    /// Lets every call through (unix sockets, `--insecure-no-auth`).
    pub fn open() -> Self {
        Self { expected: None }
    }

    fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), &'static str> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let Some(value) = metadata.get(AUTHORIZATION_METADATA) else {
            return Err(
                "this server requires `authorization: Bearer <token>`; none was sent (converge --token-file)",
            );
        };
        let Ok(value) = value.to_str() else {
            return Err("the authorization metadata is not valid ASCII");
        };
        let Some((scheme, given)) = value.split_once(' ') else {
            return Err("the authorization metadata is not `Bearer <token>`");
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err("the authorization metadata is not `Bearer <token>`");
        }
        if bool::from(digest(given.trim().as_bytes()).ct_eq(expected)) {
            Ok(())
        } else {
            Err("the bearer token is not valid")
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Interceptor for RequireBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.check(request.metadata()) {
            Ok(()) => Ok(request),
            Err(reason) => {
                let peer = request
                    .remote_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::warn!(%peer, reason, "refused an unauthenticated call");
                Err(Status::unauthenticated(reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn token() -> BearerToken {
        BearerToken::new("0123456789abcdef-right").expect("valid")
    }

    fn with_header(value: &str) -> Request<()> {
        let mut request = Request::new(());
        request.metadata_mut().insert(
            AUTHORIZATION_METADATA,
            MetadataValue::try_from(value).expect("ascii"),
        );
        request
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let mut check = RequireBearer::new(&token());
        assert!(
            check
                .call(with_header("Bearer 0123456789abcdef-right"))
                .is_ok()
        );
        assert!(
            check
                .call(with_header("bearer 0123456789abcdef-right"))
                .is_ok()
        );
        for bad in [
            "Bearer 0123456789abcdef-wrong",
            "Bearer ",
            "Basic 0123456789abcdef-right",
            "0123456789abcdef-right",
        ] {
            let status = check.call(with_header(bad)).expect_err(bad);
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        let status = check.call(Request::new(())).expect_err("no header");
        assert!(status.message().contains("none was sent"), "{status:?}");
    }

    #[test]
    fn an_open_check_lets_everything_through() {
        let mut check = RequireBearer::open();
        assert!(check.call(Request::new(())).is_ok());
        assert!(check.call(with_header("Bearer anything-at-all")).is_ok());
    }

    #[test]
    fn tcp_without_a_token_is_refused_unless_insecure_on_loopback() {
        let tcp = |s: &str| ServerAddress::Tcp(s.to_string());
        assert!(matches!(
            listener_token(&tcp("0.0.0.0:7000"), None, false),
            Err(AuthError::TokenRequired { .. })
        ));
        assert!(matches!(
            listener_token(&tcp("127.0.0.1:7000"), None, false),
            Err(AuthError::TokenRequired { .. })
        ));
        assert!(matches!(
            listener_token(&tcp("0.0.0.0:7000"), None, true),
            Err(AuthError::InsecureNotLoopback { .. })
        ));
        assert!(matches!(
            listener_token(&tcp("node-a:7000"), None, true),
            Err(AuthError::InsecureNotLoopback { .. })
        ));
        for host in ["127.0.0.1:7000", "[::1]:7000", "localhost:7000"] {
            assert!(
                matches!(listener_token(&tcp(host), None, true), Ok(None)),
                "{host}"
            );
        }
        let unix = ServerAddress::Unix("/tmp/x.sock".into());
        assert!(matches!(listener_token(&unix, None, false), Ok(None)));
    }
}
