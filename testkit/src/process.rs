//! Child processes a test started: killed by their own pid when the test lets go of them, or asked to stop with SIGTERM and awaited.

use std::ops::{Deref, DerefMut};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Why [`terminate_and_wait`] could not report an exit status.
#[derive(Debug, thiserror::Error)]
pub enum TerminateError {
    /// The child was already reaped, so it has no pid to signal.
    #[error("the child was already reaped")]
    AlreadyReaped,
    /// Sending SIGTERM to the child's pid failed.
    #[error("sending SIGTERM to pid {pid}")]
    Signal {
        pid: u32,
        #[source]
        source: nix::Error,
    },
    /// The child did not exit within the allowed time.
    #[error("pid {pid} did not exit within {within:?} of SIGTERM")]
    TimedOut { pid: u32, within: Duration },
    /// Waiting for the child failed.
    #[error("waiting for pid {pid}")]
    Wait {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Sends SIGTERM to `child`'s own pid and waits up to `within` for it to exit; returns its
/// exit status (the caller decides whether that is a success). On a timeout the child is
/// left running (a `kill_on_drop` child is then killed when dropped).
pub async fn terminate_and_wait(
    child: &mut tokio::process::Child,
    within: Duration,
) -> Result<ExitStatus, TerminateError> {
    let pid = child.id().ok_or(TerminateError::AlreadyReaped)?;
    let raw = i32::try_from(pid).map_err(|_| TerminateError::Signal {
        pid,
        source: nix::Error::EINVAL,
    })?;
    kill(Pid::from_raw(raw), Signal::SIGTERM)
        .map_err(|source| TerminateError::Signal { pid, source })?;
    tokio::time::timeout(within, child.wait())
        .await
        .map_err(|_| TerminateError::TimedOut { pid, within })?
        .map_err(|source| TerminateError::Wait { pid, source })
}

/// Owns a child process; dropping it (also while a failing test unwinds) sends SIGKILL to
/// that child's pid, never to anything found by name, and reaps it. Errors on the way (the
/// child already exited and was reaped) are ignored: the guarantee is only that the child
/// no longer runs once the guard is gone.
#[derive(Debug)]
pub struct KillOnDrop(Child);

impl KillOnDrop {
    /// Takes ownership of `child`.
    pub fn new(child: Child) -> Self {
        Self(child)
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn dropping_the_guard_kills_and_reaps_the_child() {
        let child = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        drop(KillOnDrop::new(child));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the child was reaped"
        );
    }

    #[tokio::test]
    async fn terminate_and_wait_ends_a_child_with_sigterm_and_reports_its_status() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = tokio::process::Command::new("sleep")
            .arg("300")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sleep");
        let status = terminate_and_wait(&mut child, Duration::from_secs(10))
            .await
            .expect("exits");
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        assert!(matches!(
            terminate_and_wait(&mut child, Duration::from_secs(1)).await,
            Err(TerminateError::AlreadyReaped)
        ));
    }
}
