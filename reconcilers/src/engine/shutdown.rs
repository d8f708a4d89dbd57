//! Two-step shutdown: the first request drains gracefully, the second forces.

use tokio_util::sync::CancellationToken;

/// A shutdown signal shared by a controller's tasks. The first [`request`](Self::request)
/// stops taking new work and lets in-flight reconciles finish; a second one forces: in-flight
/// reconciles are dropped at their next await point.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    graceful: CancellationToken,
    force: CancellationToken,
}

impl Shutdown {
    /// A signal nobody has requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// First call: graceful; any later call: forced. Never fails.
    pub fn request(&self) {
        if self.graceful.is_cancelled() {
            self.force.cancel();
        } else {
            self.graceful.cancel();
        }
    }

    /// Forces at once (also implies graceful).
    pub fn force(&self) {
        self.graceful.cancel();
        self.force.cancel();
    }

    /// Cancelled on the first request.
    pub fn graceful_token(&self) -> &CancellationToken {
        &self.graceful
    }

    /// Cancelled on the second request (or [`force`](Self::force)).
    pub fn force_token(&self) -> &CancellationToken {
        &self.force
    }

    /// Resolves on the first request.
    pub async fn requested(&self) {
        self.graceful.cancelled().await;
    }

    /// Resolves when shutdown is forced.
    pub async fn forced(&self) {
        self.force.cancelled().await;
    }
}
