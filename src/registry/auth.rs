//! Bearer-token authentication of the registry's `/v2/` API: the same shared token as the
//! entity server, checked in constant time, answered `401` with a `WWW-Authenticate`
//! challenge as the distribution spec asks.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use converge_watch::client::BearerToken;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The challenge sent with every `401`: HTTP Basic, whose password is the token (the user
/// name is ignored), so `docker login`, `skopeo --creds` and `crane auth` work unchanged.
/// `Authorization: Bearer <token>` is accepted as well (converge's own clients send it).
pub const CHALLENGE: &str = "Basic realm=\"converge\"";

/// Which requests the registry lets through: all (no token configured) or only those
/// carrying the token. Cheap to clone; never logs or prints the token.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    expected: Option<[u8; 32]>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("required", &self.expected.is_some())
            .finish()
    }
}

impl RegistryAuth {
    /// Requires `token` on every request (reads too: see `docs/auth.md`).
    pub fn require(token: &BearerToken) -> Self {
        Self {
            expected: Some(digest(token.expose().as_bytes())),
        }
    }

    /// Requires `token` when one is given, otherwise lets everything through.
    pub fn from_token(token: Option<&BearerToken>) -> Self {
        token.map(Self::require).unwrap_or_default()
    }

    /// Lets every request through.
    pub fn open() -> Self {
        Self::default()
    }

    /// True when requests must carry the token.
    pub fn is_required(&self) -> bool {
        self.expected.is_some()
    }

    /// Checks the `Authorization` header of a request. Fails with the reason shown to the
    /// client when the token is required and missing, malformed or wrong. The presented and
    /// the expected token are compared as SHA-256 digests in constant time, so neither the
    /// content nor the length of the expected token leaks through timing.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(
                "this registry requires a token (Authorization: Bearer <token>, or Basic with the token as password)",
            );
        };
        let Ok(value) = value.to_str() else {
            return Err("the Authorization header is not valid ASCII");
        };
        let Some((scheme, credential)) = value.trim().split_once(' ') else {
            return Err(
                "the Authorization header is not `Bearer <token>` or `Basic <credentials>`",
            );
        };
        let given = if scheme.eq_ignore_ascii_case("bearer") {
            credential.trim().as_bytes().to_vec()
        } else if scheme.eq_ignore_ascii_case("basic") {
            basic_password(credential.trim())
                .ok_or("the Basic credentials are not base64 of `user:token`")?
        } else {
            return Err(
                "the Authorization header is not `Bearer <token>` or `Basic <credentials>`",
            );
        };
        if bool::from(digest(&given).ct_eq(expected)) {
            Ok(())
        } else {
            Err("the registry token is not valid")
        }
    }
}

/// The password part of Basic credentials (`base64(user:password)`), or `None` when they
/// are not valid base64 of a string with a colon.
fn basic_password(encoded: &str) -> Option<Vec<u8>> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The 401 answer: the spec's `UNAUTHORIZED` error body and the `WWW-Authenticate` challenge.
pub fn unauthorized(reason: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", reason).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    response
}

/// axum middleware: passes the request on when [`RegistryAuth::check`] accepts it, answers
/// [`unauthorized`] otherwise, before any handler (and so the store) sees the request.
pub async fn require_token(
    State(auth): State<RegistryAuth>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(reason) => {
            let (method, path) = (request.method(), request.uri().path());
            if request.headers().contains_key(header::AUTHORIZATION) {
                tracing::warn!(%method, path, reason, "registry refused a request with bad credentials");
            } else {
                // Standard clients ask without credentials first to learn the challenge.
                tracing::debug!(%method, path, "registry challenged a request without credentials");
            }
            unauthorized(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> RegistryAuth {
        RegistryAuth::require(&BearerToken::new("0123456789abcdef-right").expect("token"))
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("ascii"),
        );
        headers
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn the_token_passes_as_bearer_or_as_basic_password() {
        let auth = auth();
        for ok in [
            "Bearer 0123456789abcdef-right".to_string(),
            "bearer 0123456789abcdef-right".to_string(),
            basic("anyone:0123456789abcdef-right"),
            basic(":0123456789abcdef-right"),
        ] {
            assert_eq!(auth.check(&headers(&ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let auth = auth();
        assert!(auth.check(&HeaderMap::new()).is_err());
        for bad in [
            "Bearer 0123456789abcdef-wrong".to_string(),
            "Bearer".to_string(),
            "Digest 0123456789abcdef-right".to_string(),
            basic("0123456789abcdef-right"),
            basic("user:0123456789abcdef-wrong"),
            "Basic !!!not-base64".to_string(),
        ] {
            assert!(auth.check(&headers(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_open_registry_lets_everything_through() {
        assert_eq!(RegistryAuth::open().check(&HeaderMap::new()), Ok(()));
        assert!(!RegistryAuth::from_token(None).is_required());
    }

    #[test]
    fn a_refusal_carries_the_challenge() {
        let response = unauthorized("no");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
    }
}
