//! Tuning of the containerd-backed sandbox reconciler: node identity, log directory, backoffs.

use std::path::PathBuf;
use std::time::Duration;

/// Exponential delay: the n-th consecutive event (1-based) waits `min(cap, base * 2^(n-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay of the first step.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl Backoff {
    /// The delay before step `n` (1 for the first); never exceeds `cap`, never panics.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }
}

/// How a [`super::SandboxReconciler`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// This node's id: sandboxes whose `spec.node` is this are ours.
    pub node_id: String,
    /// Single-node mode: sandboxes naming no node are ours too.
    pub single_node: bool,
    /// Root of container logs: `<log_root>/<sandbox>/<container>.log`. Must be absolute.
    pub log_root: PathBuf,
    /// Root of named volumes: `<volume_root>/<sandbox>/<volume>`. Must be absolute.
    /// Defaults to `volumes` next to `log_root`.
    pub volume_root: PathBuf,
    /// Delays between restarts of exited containers (restart policy `always`/`on-failure`).
    pub restart_backoff: Backoff,
    /// A container that ran at least this long before exiting restarts its backoff from the
    /// first step.
    pub restart_reset_after: Duration,
    /// Delays between retries of a sandbox that failed (unknown image, bad command, ...).
    pub failure_backoff: Backoff,
    /// SIGTERM-to-SIGKILL grace when the spec gives none.
    pub default_stop_grace: Duration,
    /// Program the shims run as log driver (`converge log-driver`, see `docs/logs.md`):
    /// timestamped, rotated logs that survive controller restarts. `None`: containers write
    /// raw output straight to `<log_root>/<sandbox>/<container>.log`.
    pub log_driver: Option<PathBuf>,
}

impl SandboxConfig {
    /// Production defaults for node `node_id` writing logs under `log_root`: restarts after
    /// 1 s doubling to 5 min (reset after 10 min of running), failed sandboxes retried after
    /// 2 s doubling to 5 min, stop grace 10 s.
    pub fn new(node_id: impl Into<String>, single_node: bool, log_root: PathBuf) -> Self {
        Self {
            node_id: node_id.into(),
            single_node,
            volume_root: log_root.with_file_name("volumes"),
            log_root,
            restart_backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(300),
            },
            restart_reset_after: Duration::from_secs(600),
            failure_backoff: Backoff {
                base: Duration::from_secs(2),
                cap: Duration::from_secs(300),
            },
            default_stop_grace: Duration::from_secs(10),
            log_driver: None,
        }
    }

    /// True when a sandbox naming `node` (empty = none) is this controller's to run.
    pub fn owns_node(&self, node: &str) -> bool {
        node == self.node_id || (node.is_empty() && self.single_node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(500),
        };
        let got: Vec<u128> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(500));
        assert_eq!(b.delay(0), Duration::from_millis(100));
    }

    #[test]
    fn a_sandbox_without_node_is_ours_only_on_a_single_node() {
        let single = SandboxConfig::new("a", true, PathBuf::from("/l"));
        assert!(single.owns_node("a") && single.owns_node("") && !single.owns_node("b"));
        let multi = SandboxConfig::new("a", false, PathBuf::from("/l"));
        assert!(multi.owns_node("a") && !multi.owns_node(""));
    }
}
