//! Child processes a test started, killed by their own pid when the test lets go of them.

use std::ops::{Deref, DerefMut};
use std::process::Child;

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
}
