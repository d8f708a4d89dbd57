//! The CLI verbs: apply, get, delete, watch, describe, and their output formats.
//!
//! Each verb is one module with a `clap::Args` struct and an async `run(&args, &ClientContext)`.
//! Verbs build their whole output first and write it in one go, so a failure never leaves
//! partial output on stdout.

pub mod apply;
pub mod artifact;
pub mod delete;
pub mod describe;
pub mod get;
pub mod input;
pub mod logs;
pub mod render;
pub mod table;
pub mod watch;

use std::io::Write;
use std::time::Duration;

use converge_watch::ServerAddress;
use converge_watch::client::{ClientError, ClientOptions, CredentialError, EntityClient};

/// How data is printed: `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The entity contract JSON.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// What every client verb needs: where the server is and how to print.
#[derive(Debug, Clone)]
pub struct ClientContext {
    /// The entity server (the first `--server`).
    pub server: ServerAddress,
    /// The other `--server` addresses, tried in order when `server` does not answer.
    pub fallback_servers: Vec<ServerAddress>,
    /// The output format (`-o`).
    pub output: OutputFormat,
    /// The bearer token file (`--token-file` / `CONVERGE_TOKEN_FILE`), read when connecting.
    pub token_file: Option<std::path::PathBuf>,
    /// The CA of a TLS server (`--tls-ca` / `CONVERGE_TLS_CA`); TLS is used when set.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Why a client verb failed. The message is meant to be printed after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The token file could not be used (unreadable, readable by others, malformed).
    #[error(transparent)]
    Token(#[from] CredentialError),
    /// The server refused the token (or its absence).
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    /// The server could not be reached. The message ends with the innermost cause (such as
    /// "Connection refused"); the full chain is logged at debug level.
    #[error("cannot reach the entity server at {address}: {reason}")]
    Connect {
        /// The address from `--server`.
        address: String,
        /// The innermost cause of the failure.
        reason: String,
    },
    /// A call to the server failed.
    #[error("{action} failed")]
    Call {
        /// What was being done, such as `get sandbox/web`.
        action: String,
        /// The server's or the transport's error.
        #[source]
        source: ClientError,
    },
    /// The entity does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A `KIND|ID` argument is neither.
    #[error("{0}")]
    BadTarget(String),
    /// The apply input was refused.
    #[error(transparent)]
    Input(#[from] input::InputError),
    /// The output could not be encoded.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// Entities kept changing underneath an apply.
    #[error("{0}")]
    Contended(String),
    /// The server did not answer in time.
    #[error("{action} timed out after {} s", after.as_secs())]
    Timeout {
        /// What was being done.
        action: String,
        /// How long the CLI waited.
        after: Duration,
    },
    /// Writing to stdout failed.
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

impl CommandError {
    /// True when stdout was closed by the reader (e.g. `| head`): not worth an error message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CommandError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl ClientContext {
    /// The client options `--token-file` and `--tls-ca` ask for; fails when a file is
    /// unreadable, the token file open to group or others or holding no valid token, or the
    /// CA file holding no certificate.
    pub fn client_options(&self) -> Result<ClientOptions, CredentialError> {
        ClientOptions::from_files(self.token_file.as_deref(), self.tls_ca.as_deref())
    }

    /// Connects to the entity server, with the token from `--token-file` if given; fails
    /// with [`CommandError::Token`] for a bad token file and [`CommandError::Connect`]
    /// naming the address when the server cannot be reached.
    pub async fn connect(&self) -> Result<EntityClient, CommandError> {
        let options = self.client_options()?;
        EntityClient::connect_with(&self.addresses(), &options)
            .await
            .map_err(|source| {
                tracing::debug!(error = ?source, address = %self.server, "cannot connect");
                let address = self.server.to_string();
                let cause = root_cause(&source);
                // The client often prefixes the cause with the address; say it only once.
                let reason = cause
                    .strip_prefix(&format!("{address}: "))
                    .unwrap_or(&cause)
                    .to_string();
                CommandError::Connect { address, reason }
            })
    }

    /// Every `--server` address, the first one first.
    pub fn addresses(&self) -> Vec<ServerAddress> {
        std::iter::once(self.server.clone())
            .chain(self.fallback_servers.iter().cloned())
            .collect()
    }

    /// Writes `text` to stdout in one piece and flushes it.
    pub fn print(&self, text: &str) -> Result<(), CommandError> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(CommandError::Output)
    }
}

/// How long one request to the server may take before the CLI gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one request with [`REQUEST_TIMEOUT`]; fails with [`CommandError::Timeout`] when the
/// server does not answer in time, and hands back the request's own result otherwise.
pub(crate) async fn timed<T>(
    action: &str,
    request: impl Future<Output = Result<T, ClientError>>,
) -> Result<Result<T, ClientError>, CommandError> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| CommandError::Timeout {
            action: action.to_string(),
            after: REQUEST_TIMEOUT,
        })
}

/// Runs one request with [`REQUEST_TIMEOUT`] and maps its error with [`call_error`].
pub(crate) async fn call<T>(
    action: &str,
    id: Option<&str>,
    request: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, CommandError> {
    timed(action, request)
        .await?
        .map_err(|e| call_error(action, id, e))
}

/// The text of the innermost error in `err`'s source chain.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Wraps a client error: `NotFound` becomes [`CommandError::NotFound`] for `id`, and other
/// errors say which `action` failed.
pub(crate) fn call_error(action: &str, id: Option<&str>, source: ClientError) -> CommandError {
    match (source, id) {
        (ClientError::NotFound(_), Some(id)) => CommandError::NotFound(id.to_string()),
        (ClientError::Unauthenticated(message), _) => CommandError::Unauthenticated(message),
        (source, _) => CommandError::Call {
            action: action.to_string(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_answers_times_out_with_its_action_named() {
        let never = std::future::pending::<Result<(), ClientError>>();
        let err = call("get sandbox/web", None, never)
            .await
            .expect_err("must time out");
        assert_eq!(err.to_string(), "get sandbox/web timed out after 30 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_entity_becomes_not_found_for_its_id() {
        let missing = async { Err::<(), _>(ClientError::NotFound("whatever".into())) };
        let err = call("delete sandbox/a", Some("sandbox/a"), missing)
            .await
            .expect_err("missing");
        assert_eq!(err.to_string(), "sandbox/a not found");
    }

    #[test]
    fn the_root_cause_is_the_innermost_error() {
        let inner = std::io::Error::other("Connection refused");
        let outer = crate::cli::input::InputError::Read {
            source_name: "x".into(),
            source: inner,
        };
        assert_eq!(root_cause(&outer), "Connection refused");
    }
}
