//! Errors of the registry: the server's own failures and the distribution spec's JSON error
//! responses (`{"errors":[{"code","message","detail"}]}`).

use std::net::SocketAddr;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::names::NameError;
use super::store::ArtifactStoreError;

/// Failures of running the registry server.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("registry server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The artifact store could not be opened.
    #[error("artifact store: {0}")]
    Store(#[from] ArtifactStoreError),
    /// The TLS certificate or key was refused.
    #[error(transparent)]
    Tls(#[from] super::tls::RegistryTlsError),
}

/// One error response of the distribution API: an HTTP status and a spec error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status sent.
    pub status: StatusCode,
    /// Spec error code, e.g. `BLOB_UNKNOWN`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// Builds an error response.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404 `BLOB_UNKNOWN`.
    pub fn blob_unknown(digest: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is unknown"),
        )
    }

    /// 404 `MANIFEST_UNKNOWN`.
    pub fn manifest_unknown(reference: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest {reference} is unknown"),
        )
    }

    /// 400 `MANIFEST_INVALID`.
    pub fn manifest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message)
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        let code = match e {
            NameError::Name(_) => "NAME_INVALID",
            NameError::Digest(_) => "DIGEST_INVALID",
            NameError::Tag(_) => "TAG_INVALID",
        };
        Self::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<ArtifactStoreError> for ApiError {
    fn from(e: ArtifactStoreError) -> Self {
        use ArtifactStoreError as E;
        let (status, code) = match &e {
            E::DigestMismatch { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            E::UploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            E::RangeInvalid { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            E::SizeMismatch { .. } => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            E::Body(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            E::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID"),
            E::BadManifest { .. } => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            E::Io { .. } | E::Corrupt(_) => {
                tracing::error!(error = %e, "artifact store failure");
                (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN")
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"errors": [{"code": self.code, "message": self.message, "detail": null}]});
        (self.status, Json(body)).into_response()
    }
}
