//! Teardown helpers of the private containerd: kill tasks and shims, unmount, remove cgroups.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{DeleteTaskRequest, KillRequest, WaitRequest};
use containerd_client::services::v1::{ListNamespacesRequest, ListTasksRequest};
use containerd_client::tonic::Request;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn with_ns<T>(msg: T, ns: &str) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(value) = ns.parse() {
        req.metadata_mut().insert("containerd-namespace", value);
    }
    req
}

/// Kills and deletes every task in every namespace; returns the namespaces seen.
pub(crate) async fn kill_tasks(socket: PathBuf) -> Vec<String> {
    let Ok(client) = containerd_client::Client::from_path(&socket).await else {
        return Vec::new();
    };
    let Ok(resp) = client
        .namespaces()
        .list(ListNamespacesRequest::default())
        .await
    else {
        return Vec::new();
    };
    let namespaces: Vec<String> = resp
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    for ns in &namespaces {
        let Ok(tasks) = client
            .tasks()
            .list(with_ns(ListTasksRequest::default(), ns))
            .await
        else {
            continue;
        };
        for task in tasks.into_inner().tasks {
            let id = task.id;
            let _ = client
                .tasks()
                .kill(with_ns(
                    KillRequest {
                        container_id: id.clone(),
                        signal: 9,
                        all: true,
                        ..Default::default()
                    },
                    ns,
                ))
                .await;
            let wait = WaitRequest {
                container_id: id.clone(),
                ..Default::default()
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                client.tasks().wait(with_ns(wait, ns)),
            )
            .await;
            let _ = client
                .tasks()
                .delete(with_ns(
                    DeleteTaskRequest {
                        container_id: id.clone(),
                    },
                    ns,
                ))
                .await;
        }
    }
    namespaces
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn parent_pid(pid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// SIGKILLs shims (and their init processes) whose bundles are still under `state`,
/// checking each pid really is a shim (or a shim's child) before killing it.
pub(crate) fn kill_leftover_shims(state: &Path) {
    let tasks_dir = state.join("io.containerd.runtime.v2.task");
    let Ok(namespaces) = fs::read_dir(&tasks_dir) else {
        return;
    };
    for ns in namespaces.flatten() {
        let Ok(bundles) = fs::read_dir(ns.path()) else {
            continue;
        };
        for bundle in bundles.flatten() {
            let Some(shim) = read_pid(&bundle.path().join("shim.pid")) else {
                continue;
            };
            let cmdline = fs::read(format!("/proc/{shim}/cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains("containerd-shim") {
                continue;
            }
            if let Some(init) = read_pid(&bundle.path().join("init.pid"))
                && parent_pid(init) == Some(shim)
            {
                let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(shim), Signal::SIGKILL);
        }
    }
}

/// Decodes the octal escapes (`\040`) mountinfo uses in paths.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(digits) = std::str::from_utf8(&bytes[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(digits, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts every mount point under `dir`, deepest first; lazily when busy.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        if umount2(&point, MntFlags::empty()).is_err() {
            let _ = umount2(&point, MntFlags::MNT_DETACH);
        }
    }
}

/// Removes the (empty) per-namespace cgroup parents converge's runtime spec puts containers under.
pub(crate) fn remove_cgroups(namespaces: &[String]) {
    let Ok(controllers) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = controllers.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        for ns in namespaces {
            let _ = fs::remove_dir(root.join("converge").join(ns));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
