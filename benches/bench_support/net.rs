//! A bench's own sandbox network (bridge `cvb<random>`, a fixed 10.199.x subnet no test uses, namespaces pinned under containerd's shared dir), torn down on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use converge_reconcilers::network::NetnsDir;

/// The bridge and run dir a bench's controller uses; dropping it unpins every namespace
/// left under the run dir and deletes their veths and the bridge (errors are printed).
pub struct BenchNetwork {
    /// `cvb` + 8 hex digits.
    pub bridge: String,
    /// `10.199.<n>.0/24`.
    pub subnet: String,
    /// Where namespaces are pinned (`<run_dir>/netns/<name>`).
    pub run_dir: PathBuf,
}

impl BenchNetwork {
    /// A fresh bridge name on `subnet`, namespaces under `run_dir` (nothing is created;
    /// the controller creates the bridge on first use).
    pub fn new(subnet: &str, run_dir: PathBuf) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(converge_testkit::unique_name("bnet"));
        BenchNetwork {
            bridge: format!("cvb{:08x}", seed as u32),
            subnet: subnet.to_string(),
            run_dir,
        }
    }

    /// The controller flags selecting this network.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--bridge".into(),
            self.bridge.clone(),
            "--subnet".into(),
            self.subnet.clone(),
            "--run-dir".into(),
            self.run_dir.display().to_string(),
        ]
    }

    /// Names of the namespaces pinned right now.
    pub fn pinned(&self) -> Vec<String> {
        NetnsDir::new(&self.run_dir).list().unwrap_or_default()
    }

    /// Whether `name`'s namespace is pinned.
    pub fn is_pinned(&self, name: &str) -> bool {
        self.run_dir.join("netns").join(name).exists()
    }
}

impl Drop for BenchNetwork {
    fn drop(&mut self) {
        let run_dir = self.run_dir.clone();
        // Drop may run inside the bench's runtime: unpin on a thread with its own.
        let left = std::thread::spawn(move || unpin_all(&run_dir))
            .join()
            .unwrap_or_default();
        for link in left.iter().chain(std::iter::once(&self.bridge)) {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Unpins every namespace under `run_dir`; returns their names.
fn unpin_all(run_dir: &Path) -> Vec<String> {
    let dir = NetnsDir::new(run_dir);
    let names = dir.list().unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cleanup: no runtime to unpin namespaces: {e}");
            return names;
        }
    };
    runtime.block_on(async {
        for name in &names {
            if let Err(e) = dir.delete(name).await {
                eprintln!("cleanup: unpinning {name}: {e}");
            }
        }
    });
    names
}
