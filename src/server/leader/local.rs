//! The trivial election of a single server (a redb store): the process that owns the redb
//! file is the only server there is, so it always leads.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{LeaderError, LeaderTerm, Leadership, valid_task};

/// Always elected at once. One process owns a redb file (redb locks it), so there is no
/// other server to race; terms have fencing revision 1, no fence (nothing to check), and
/// end only when resigned.
#[derive(Debug, Clone)]
pub struct LocalLeadership {
    task: String,
}

impl LocalLeadership {
    /// The local election for `task`; `BadTask` if the name is not key-safe (kept the same
    /// as on etcd so configurations carry over).
    pub fn new(task: &str) -> Result<Self, LeaderError> {
        valid_task(task)?;
        Ok(Self {
            task: task.to_string(),
        })
    }
}

#[async_trait]
impl Leadership for LocalLeadership {
    fn task(&self) -> &str {
        &self.task
    }

    async fn campaign(&self, stop: &CancellationToken) -> Option<LeaderTerm> {
        if stop.is_cancelled() {
            return None;
        }
        Some(LeaderTerm::unfenced(&self.task, 1))
    }

    async fn check(&self, term: &LeaderTerm) -> Result<(), LeaderError> {
        term.ensure_alive()
    }

    async fn resign(&self, term: &LeaderTerm) {
        term.lost.cancel();
    }
}
