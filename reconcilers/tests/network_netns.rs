//! Pinned network namespaces against the real kernel (needs root): idempotent create and delete, leftovers, listing, entering.

mod net_support;

use std::path::Path;

use converge_reconcilers::network::netns::is_pinned;
use converge_reconcilers::network::{NetnsDir, NetnsError, run_in_netns};
use net_support::can_run;

/// A private run dir whose pinned namespaces are all unpinned on drop.
struct RunDir {
    netns: NetnsDir,
    _dir: tempfile::TempDir,
}

impl RunDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            netns: NetnsDir::new(dir.path()),
            _dir: dir,
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let netns = self.netns.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                for name in netns.list().unwrap_or_default() {
                    if let Err(e) = netns.delete(&name).await {
                        eprintln!("cleanup: unpinning {name}: {e}");
                    }
                }
            });
        });
        if cleanup.join().is_err() {
            eprintln!("netns cleanup panicked");
        }
    }
}

/// The inode of the network namespace the current thread is in.
fn current_netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("own netns")
        .ino()
}

fn inode_of(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("pin").ino()
}

#[tokio::test]
async fn creating_a_namespace_twice_pins_one_namespace_and_deleting_twice_is_fine() {
    if !can_run("netns tests") {
        return;
    }
    let run = RunDir::new();
    let path = run.netns.create("cvtest-a").await.expect("create");
    assert!(is_pinned(&path));
    let inode = inode_of(&path);
    assert_eq!(run.netns.create("cvtest-a").await.expect("again"), path);
    assert_eq!(inode_of(&path), inode, "same namespace, not a second mount");
    assert_eq!(
        run.netns.list().expect("list"),
        vec!["cvtest-a".to_string()]
    );
    assert!(run.netns.delete("cvtest-a").await.expect("delete"));
    assert!(!path.exists());
    assert!(!run.netns.delete("cvtest-a").await.expect("delete again"));
    assert!(run.netns.list().expect("list").is_empty());
}

#[tokio::test]
async fn an_empty_pin_file_left_by_a_crash_is_mounted_over_or_removed() {
    if !can_run("netns tests") {
        return;
    }
    let run = RunDir::new();
    std::fs::create_dir_all(run.netns.dir()).expect("mkdir");
    let leftover = run.netns.dir().join("cvtest-b");
    std::fs::write(&leftover, b"").expect("empty pin file");
    assert!(!is_pinned(&leftover));
    let path = run
        .netns
        .create("cvtest-b")
        .await
        .expect("create over leftover");
    assert!(is_pinned(&path));

    let other = run.netns.dir().join("cvtest-c");
    std::fs::write(&other, b"").expect("empty pin file");
    assert!(run.netns.delete("cvtest-c").await.expect("delete leftover"));
    assert!(!other.exists());
}

#[tokio::test]
async fn work_runs_inside_the_namespace_and_the_caller_stays_outside() {
    if !can_run("netns tests") {
        return;
    }
    let run = RunDir::new();
    let path = run.netns.create("cvtest-d").await.expect("create");
    let before = current_netns_inode();
    let inside = run_in_netns(&path, || async { current_netns_inode() })
        .await
        .expect("run inside");
    assert_eq!(inside, inode_of(&path));
    assert_ne!(inside, before);
    assert_eq!(current_netns_inode(), before, "caller did not move");
}

#[tokio::test]
async fn entering_a_path_that_is_not_a_namespace_is_refused() {
    if !can_run("netns tests") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"").expect("file");
    let err = run_in_netns(&plain, || async {})
        .await
        .expect_err("refused");
    assert!(matches!(err, NetnsError::NotANamespace { .. }), "{err}");
}

#[tokio::test]
async fn a_name_with_a_slash_is_refused_without_touching_the_filesystem() {
    let run = RunDir::new();
    let err = run.netns.create("../escape").await.expect_err("refused");
    assert!(matches!(err, NetnsError::InvalidName { .. }), "{err}");
    assert!(!run.netns.dir().exists());
}
