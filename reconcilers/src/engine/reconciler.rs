//! The reconciler contract: what a controller calls for each key, and what it may answer.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::plan::Executor;

/// What a key type must offer to go through the engine.
pub trait QueueKey: Clone + Eq + Hash + Send + Sync + Debug + Display + 'static {}
impl<T: Clone + Eq + Hash + Send + Sync + Debug + Display + 'static> QueueKey for T {}

/// What to do with a key after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Converged; look again only when something changes (or at the next resync).
    Done,
    /// Look again after this long (on the repair lane, through the token bucket); the
    /// earliest pending requeue of a key wins.
    RequeueAfter(Duration),
}

/// A boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a reconcile failed. Transient errors are retried with per-key backoff; terminal ones
/// are not (the reconciler is expected to have written why into the object's status).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Worth retrying later.
    #[error("{message}")]
    Transient {
        /// What failed, for logs.
        message: String,
        /// The underlying failure, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// Retrying cannot help until the object changes.
    #[error("{message} (terminal, not retried)")]
    Terminal {
        /// What failed, for logs.
        message: String,
        /// The underlying failure, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl ReconcileError {
    /// A transient error with a message only.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            source: None,
        }
    }

    /// A transient error wrapping a cause.
    pub fn transient_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Transient {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A terminal error with a message only.
    pub fn terminal(message: impl Into<String>) -> Self {
        Self::Terminal {
            message: message.into(),
            source: None,
        }
    }

    /// A terminal error wrapping a cause.
    pub fn terminal_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Terminal {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// True when the engine must not retry.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Terminal { .. })
    }
}

/// What a reconcile gets besides its key.
#[derive(Debug, Clone)]
pub struct Context {
    /// Every mutation goes through it; in dry-run it records a plan instead.
    pub executor: Executor,
    /// Cancelled when shutdown is forced: long reconciles should stop at the next safe point.
    pub cancel: CancellationToken,
}

/// A level-triggered reconciler: reads desired and actual state for `key` and acts on the
/// difference through `ctx.executor`. Must be idempotent; may be called any number of times.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// What identifies one object to reconcile.
    type Key: QueueKey;

    /// Converges one key. A panic is caught by the runner, counted and retried with backoff.
    async fn reconcile(&self, key: &Self::Key, ctx: &Context) -> Result<Action, ReconcileError>;

    /// Short stable name, used as the `controller` metric label and in logs.
    fn name(&self) -> &str;
}
