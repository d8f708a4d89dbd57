//! `ClientError`: what a client call can fail with, mapped from gRPC statuses.

use tonic::{Code, Status};

use crate::entity::{DecodeError, EntityId};

/// Metadata key in which the server reports an entity's current revision on a conflict.
pub const CURRENT_REVISION_METADATA: &str = "x-converge-current-revision";

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The entity does not exist; carries its id (or the server's message if none is known).
    #[error("{0} not found")]
    NotFound(String),
    /// An expected revision did not match (or a create-only put found the entity existing).
    #[error("conflict on {id}: {message}")]
    Conflict {
        /// The entity concerned.
        id: String,
        /// The entity's current revision, when the server reported it (0 = does not exist).
        current: Option<i64>,
        /// The server's explanation.
        message: String,
    },
    /// The server refused the request as invalid; the message names the offending field.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The server refused the caller's identity or permissions.
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    /// The server could not be reached, or the connection to it broke.
    #[error("entity server at {address} is unavailable")]
    Unavailable {
        /// The address tried, as `unix:PATH` or `tcp:HOST:PORT`.
        address: String,
        /// What went wrong underneath.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with something the client cannot decode.
    #[error("malformed response from entity server: {context}")]
    Decode {
        /// What was being decoded.
        context: String,
        /// The decoding failure, if there is a more specific one.
        #[source]
        source: Option<DecodeError>,
    },
    /// Any other gRPC failure.
    #[error("entity server error: {0}")]
    Other(Status),
}

impl ClientError {
    /// True when retrying the same call later may succeed without changing it:
    /// the server was unreachable, overloaded or timed out. Conflicts, invalid requests,
    /// missing entities and decode failures are not retryable as they are.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unavailable { .. } => true,
            ClientError::Other(status) => matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
            ),
            _ => false,
        }
    }

    /// Maps a gRPC status to a typed error; `id` names the entity for conflicts.
    pub(super) fn from_status(status: Status, address: &str, id: Option<&EntityId>) -> Self {
        let message = status.message().to_string();
        // The server's messages start with the entity concerned; a batch call has no
        // single id of its own, so it is taken from there.
        let subject = || match id {
            Some(id) => id.to_string(),
            None => message
                .split_whitespace()
                .next()
                .and_then(|word| word.trim_end_matches(':').parse::<EntityId>().ok())
                .map(|id| id.to_string())
                .unwrap_or_default(),
        };
        match status.code() {
            Code::NotFound => {
                let subject = subject();
                ClientError::NotFound(if subject.is_empty() { message } else { subject })
            }
            Code::Aborted | Code::AlreadyExists => {
                let current = status
                    .metadata()
                    .get(CURRENT_REVISION_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<i64>().ok());
                ClientError::Conflict {
                    id: subject(),
                    current,
                    message,
                }
            }
            Code::InvalidArgument | Code::OutOfRange => ClientError::Invalid(message),
            Code::Unauthenticated | Code::PermissionDenied => ClientError::Unauthenticated(message),
            Code::Unavailable => ClientError::Unavailable {
                address: address.to_string(),
                source: Box::new(status),
            },
            _ => ClientError::Other(status),
        }
    }
}
