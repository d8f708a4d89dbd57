//! The one error type of the containerd adapter, mapped from gRPC status codes.

use tonic::Code;

/// What went wrong talking to containerd. Every variant names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The object does not exist (gRPC `NotFound`).
    #[error("{operation}: not found: {message}")]
    NotFound {
        /// The call and its object, e.g. `get image demo:v1`.
        operation: String,
        /// containerd's message.
        message: String,
    },
    /// The object exists already (gRPC `AlreadyExists`).
    #[error("{operation}: already exists: {message}")]
    AlreadyExists {
        /// The call and its object.
        operation: String,
        /// containerd's message.
        message: String,
    },
    /// containerd cannot be reached right now (socket missing, restarting, ref locked);
    /// retrying later may succeed.
    #[error("{operation}: containerd unavailable: {message}")]
    Unavailable {
        /// The call and its object.
        operation: String,
        /// Why.
        message: String,
    },
    /// The request was refused as invalid before anything changed (bad id, bad input).
    #[error("{operation}: invalid input: {message}")]
    InvalidInput {
        /// The call and its object.
        operation: String,
        /// Why.
        message: String,
    },
    /// The object is in the wrong state for the call (gRPC `FailedPrecondition`), e.g.
    /// deleting a running task.
    #[error("{operation}: failed precondition: {message}")]
    FailedPrecondition {
        /// The call and its object.
        operation: String,
        /// containerd's message.
        message: String,
    },
    /// Any other failure reported by containerd (runc errors such as a missing executable
    /// land here with runc's message).
    #[error("{operation}: {status}")]
    Other {
        /// The call and its object.
        operation: String,
        /// The gRPC status.
        #[source]
        status: tonic::Status,
    },
    /// Data read from containerd or from a blob source did not make sense (bad JSON,
    /// digest mismatch, missing field).
    #[error("{operation}: {message}")]
    BadData {
        /// The call and its object.
        operation: String,
        /// Why.
        message: String,
    },
    /// A blob source failed.
    #[error("{operation}: blob source failed")]
    Source {
        /// The call and its object.
        operation: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ContainerdError {
    /// Maps a gRPC status to the variant its code stands for.
    pub fn from_status(operation: impl Into<String>, status: tonic::Status) -> Self {
        let operation = operation.into();
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => ContainerdError::NotFound { operation, message },
            Code::AlreadyExists => ContainerdError::AlreadyExists { operation, message },
            Code::Unavailable => ContainerdError::Unavailable { operation, message },
            Code::InvalidArgument => ContainerdError::InvalidInput { operation, message },
            Code::FailedPrecondition => ContainerdError::FailedPrecondition { operation, message },
            _ => ContainerdError::Other { operation, status },
        }
    }

    /// Shorthand for [`ContainerdError::InvalidInput`].
    pub fn invalid(operation: impl Into<String>, message: impl Into<String>) -> Self {
        ContainerdError::InvalidInput {
            operation: operation.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`ContainerdError::BadData`].
    pub fn bad_data(operation: impl Into<String>, message: impl Into<String>) -> Self {
        ContainerdError::BadData {
            operation: operation.into(),
            message: message.into(),
        }
    }

    /// True for `NotFound`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ContainerdError::NotFound { .. })
    }

    /// True for `AlreadyExists`.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ContainerdError::AlreadyExists { .. })
    }

    /// True when retrying later may help (containerd unreachable or busy).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ContainerdError::Unavailable { .. })
    }
}

/// Extension to turn `Result<T, tonic::Status>` into `Result<T, ContainerdError>` with context.
pub(crate) trait StatusContext<T> {
    /// Maps the error, naming the operation.
    fn op(self, operation: impl FnOnce() -> String) -> Result<T, ContainerdError>;
}

impl<T> StatusContext<T> for Result<T, tonic::Status> {
    fn op(self, operation: impl FnOnce() -> String) -> Result<T, ContainerdError> {
        self.map_err(|status| ContainerdError::from_status(operation(), status))
    }
}

/// Turns `Ok(None)`-able lookups into options: `NotFound` becomes `Ok(None)`.
pub(crate) fn found<T>(result: Result<T, ContainerdError>) -> Result<Option<T>, ContainerdError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Treats `NotFound` as success (for idempotent deletes).
pub(crate) fn ignore_not_found(result: Result<(), ContainerdError>) -> Result<(), ContainerdError> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_typed_errors() {
        let e = ContainerdError::from_status("get image x", tonic::Status::not_found("image x"));
        assert!(e.is_not_found());
        let e = ContainerdError::from_status("create", tonic::Status::already_exists("c"));
        assert!(e.is_already_exists());
        let e = ContainerdError::from_status("list", tonic::Status::unavailable("gone"));
        assert!(e.is_unavailable());
        let e = ContainerdError::from_status("start", tonic::Status::unknown("runc said no"));
        assert!(matches!(e, ContainerdError::Other { .. }));
        assert!(e.to_string().contains("start"));
    }
}
