//! Leader election for cluster-wide work that must run on one server at a time (blob GC,
//! dead-sandbox cleanup), with fencing by the leader key's create revision. See
//! `docs/leader.md`.

mod etcd;
mod local;
mod work;

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::server::store::Fence;

pub use etcd::EtcdLeadership;
pub use local::LocalLeadership;
pub use work::{FencedBlobStore, run_while_leader};

/// The default lifetime of a leader's etcd lease (`--leader-ttl`): a leader that dies is
/// replaced within about this long.
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(10);

/// The shortest lease etcd grants (shorter requests are silently raised by etcd, which
/// would break the renewal arithmetic).
pub const MIN_LEADER_TTL: Duration = Duration::from_secs(2);

/// Election of the blob GC over a shared artifact store.
pub const BLOB_GC_TASK: &str = "blob-gc";

/// Election of the cluster-wide entity work (dead-sandbox cleanup, and any other work that
/// must run once per cluster).
pub const CLUSTER_TASK: &str = "cluster";

/// Why an election could not be set up, or why a term can no longer be trusted.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The task name cannot be part of an etcd key.
    #[error("invalid election task {0:?}: use lowercase letters, digits and '-'")]
    BadTask(String),
    /// The lease would be shorter than etcd grants.
    #[error("leader TTL {0:?} is too short: at least 2s")]
    TtlTooShort(Duration),
    /// etcd refused or did not answer a request.
    #[error("etcd: {what}")]
    Etcd {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer a request in time.
    #[error("etcd: {what}: no answer within {after:?}")]
    Timeout {
        /// What was being done.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// The lease was not renewed in time (etcd answered with TTL 0 or not at all).
    #[error("the leader lease {lease:x} expired")]
    LeaseExpired {
        /// The lease id.
        lease: i64,
    },
    /// The term is over: the leader key is gone or belongs to a newer term.
    #[error("leadership of {task} lost: the term with fencing revision {fencing} is over")]
    Lost {
        /// The election.
        task: String,
        /// The fencing revision of the term that ended.
        fencing: i64,
    },
}

/// One term of leadership. `fencing` grows from term to term of one election (it is the
/// leader key's create revision); `lost` is cancelled as soon as the term can no longer
/// be trusted (lease renewal failed past its margin, the key disappeared or changed
/// hands) and when the term is resigned. Work done under the term watches `lost` and,
/// before each destructive step, asks [`Leadership::check`] (or writes with [`fence`]).
///
/// [`fence`]: LeaderTerm::fence
#[derive(Debug, Clone)]
pub struct LeaderTerm {
    /// The election this term belongs to.
    pub task: String,
    /// The leader key's create revision: strictly larger for every later term.
    pub fencing: i64,
    /// Cancelled when the term ends, for whatever reason.
    pub lost: CancellationToken,
    fence: Option<Fence>,
    lease: Option<i64>,
}

impl LeaderTerm {
    /// The fence a store checks atomically with a write (`Store::delete_fenced`); `None`
    /// for a local (single-server) term, which needs none.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// True until the term ends.
    pub fn is_alive(&self) -> bool {
        !self.lost.is_cancelled()
    }

    /// `Ok` while the term is alive, else `Lost` naming its task and fencing revision. This
    /// is the whole [`Leadership::check`] of an election whose terms end only locally
    /// (resigned or cancelled), with no shared record to read.
    pub fn ensure_alive(&self) -> Result<(), LeaderError> {
        if self.is_alive() {
            Ok(())
        } else {
            Err(LeaderError::Lost {
                task: self.task.clone(),
                fencing: self.fencing,
            })
        }
    }

    /// A term held only by this process: no fence and no lease, alive until `lost` is
    /// cancelled (by resigning it).
    fn unfenced(task: &str, fencing: i64) -> Self {
        Self {
            task: task.to_string(),
            fencing,
            lost: CancellationToken::new(),
            fence: None,
            lease: None,
        }
    }
}

/// An election among the servers of one cluster for one task. Implementations: on etcd
/// ([`EtcdLeadership`]) and trivially for a single server ([`LocalLeadership`]).
#[async_trait]
pub trait Leadership: Send + Sync + 'static {
    /// The election's task name.
    fn task(&self) -> &str;

    /// Campaigns until elected, then returns the term; `None` once `stop` is cancelled
    /// (nothing is left behind then). Transient failures (etcd unreachable) are retried
    /// with backoff and logged, never returned.
    async fn campaign(&self, stop: &CancellationToken) -> Option<LeaderTerm>;

    /// Confirms, with one read, that `term` still holds (its leader key exists with its
    /// fencing revision). `Lost` if not, `Etcd` if that cannot be confirmed: either way
    /// the caller must not take its next destructive step.
    async fn check(&self, term: &LeaderTerm) -> Result<(), LeaderError>;

    /// Ends `term` (cancels `lost`) and gives the election up at once, so another server
    /// can take over without waiting for the lease to expire. Best effort: failures are
    /// logged, and the lease then expires on its own.
    async fn resign(&self, term: &LeaderTerm);
}

/// Checks that `task` can be part of an etcd key and a log line.
fn valid_task(task: &str) -> Result<(), LeaderError> {
    let ok = !task.is_empty()
        && task.len() <= 63
        && task
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LeaderError::BadTask(task.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_are_key_safe() {
        assert!(valid_task("blob-gc").is_ok());
        assert!(valid_task("").is_err());
        assert!(valid_task("a/b").is_err());
        assert!(valid_task("Upper").is_err());
    }
}
