//! Named sandbox volumes: host directories `<volume_root>/<sandbox>/<volume>`, created on
//! first use, bind-mounted into the containers, removed with the sandbox.

use std::path::{Component, Path, PathBuf};

use converge_watch::spec::{ContainerSpec, VolumeSpec};
use oci_spec::runtime::{Mount, MountBuilder};

use crate::engine::{Executor, PlannedAction, Verb};

/// Why a volume could not be resolved, created, mounted or removed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A sandbox or volume name is not one plain path component (empty, `.`, `..`, `/`).
    #[error("{what} name {name:?} cannot name a directory")]
    BadName {
        /// `sandbox` or `volume`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// The volume root is relative, so volume paths would depend on the working directory.
    #[error("volume root {0} is not absolute")]
    RelativeRoot(PathBuf),
    /// A container mounts a volume the sandbox does not declare.
    #[error("container {container}: volume {volume:?} is not declared by the sandbox")]
    Undeclared {
        /// Container name.
        container: String,
        /// The volume it mounts.
        volume: String,
    },
    /// The bind mount could not be described.
    #[error("container {container}: cannot describe the mount of {path}: {source}")]
    Mount {
        /// Container name.
        container: String,
        /// Mount path inside the container.
        path: String,
        /// Why.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// Creating or removing a volume directory failed.
    #[error("volume directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Plan target of a volume (`volume/<sandbox>/<volume>`).
pub fn volume_target(sandbox: &str, volume: &str) -> String {
    format!("volume/{sandbox}/{volume}")
}

/// Checks that `name` is a single ordinary path component.
fn plain(what: &'static str, name: &str) -> Result<(), VolumeError> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(c)), None) if c == name && !name.contains('/') => Ok(()),
        _ => Err(VolumeError::BadName {
            what,
            name: name.to_string(),
        }),
    }
}

/// `<root>/<sandbox>`: the directory holding all volumes of `sandbox`. Fails (touching
/// nothing) unless `root` is absolute and `sandbox` is one plain path component, so the
/// result always lies strictly inside `root`.
pub fn sandbox_volumes_dir(root: &Path, sandbox: &str) -> Result<PathBuf, VolumeError> {
    if !root.is_absolute() {
        return Err(VolumeError::RelativeRoot(root.to_path_buf()));
    }
    plain("sandbox", sandbox)?;
    let dir = root.join(sandbox);
    if dir.parent() != Some(root) {
        return Err(VolumeError::BadName {
            what: "sandbox",
            name: sandbox.to_string(),
        });
    }
    Ok(dir)
}

/// `<root>/<sandbox>/<volume>`, with the same guarantees as [`sandbox_volumes_dir`].
pub fn volume_dir(root: &Path, sandbox: &str, volume: &str) -> Result<PathBuf, VolumeError> {
    let parent = sandbox_volumes_dir(root, sandbox)?;
    plain("volume", volume)?;
    let dir = parent.join(volume);
    if !dir.starts_with(root) || dir.parent() != Some(parent.as_path()) {
        return Err(VolumeError::BadName {
            what: "volume",
            name: volume.to_string(),
        });
    }
    Ok(dir)
}

/// Creates, through `exec`, every volume directory of `sandbox` that does not exist yet
/// (existing ones, and their contents, are kept). Dry-run: plans the creations only.
/// Fails on the first bad name or directory that cannot be created.
pub async fn ensure_volumes(
    root: &Path,
    sandbox: &str,
    volumes: &[VolumeSpec],
    exec: &Executor,
) -> Result<(), VolumeError> {
    for volume in volumes {
        let dir = volume_dir(root, sandbox, &volume.name)?;
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            continue;
        }
        let action = PlannedAction::new(
            Verb::Create,
            volume_target(sandbox, &volume.name),
            "volume missing",
        );
        let create = async {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|source| VolumeError::Io {
                    path: dir.clone(),
                    source,
                })
        };
        exec.perform(action, create).await?;
    }
    Ok(())
}

/// Removes, through `exec`, the directory of all volumes of `sandbox` with their contents;
/// nothing to do when it does not exist. Call only once the sandbox's containers are gone.
pub async fn remove_volumes(
    root: &Path,
    sandbox: &str,
    exec: &Executor,
    reason: &str,
) -> Result<(), VolumeError> {
    let dir = sandbox_volumes_dir(root, sandbox)?;
    if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
        return Ok(());
    }
    let action = PlannedAction::new(
        Verb::Delete,
        format!("volume/{sandbox}"),
        reason.to_string(),
    );
    let removal = async {
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|source| VolumeError::Io {
                path: dir.clone(),
                source,
            })
    };
    exec.perform(action, removal).await?;
    Ok(())
}

/// True when `sandbox` has a volume directory on this node (bad names: false).
pub async fn has_volumes(root: &Path, sandbox: &str) -> bool {
    match sandbox_volumes_dir(root, sandbox) {
        Ok(dir) => tokio::fs::try_exists(&dir).await.unwrap_or(false),
        Err(_) => false,
    }
}

/// The bind mounts of container `c` (`rbind`, `rprivate`, `ro` or `rw`), in spec order.
/// Fails when it mounts a volume missing from `volumes` or a name is bad; creates nothing.
pub fn bind_mounts(
    root: &Path,
    sandbox: &str,
    volumes: &[VolumeSpec],
    c: &ContainerSpec,
) -> Result<Vec<Mount>, VolumeError> {
    c.mounts
        .iter()
        .map(|m| {
            if !volumes.iter().any(|v| v.name == m.volume) {
                return Err(VolumeError::Undeclared {
                    container: c.name.clone(),
                    volume: m.volume.clone(),
                });
            }
            let source = volume_dir(root, sandbox, &m.volume)?;
            let mode = if m.read_only { "ro" } else { "rw" };
            MountBuilder::default()
                .destination(PathBuf::from(&m.path))
                .typ("bind")
                .source(source)
                .options(vec!["rbind".into(), "rprivate".into(), mode.to_string()])
                .build()
                .map_err(|source| VolumeError::Mount {
                    container: c.name.clone(),
                    path: m.path.clone(),
                    source,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use converge_watch::spec::MountSpec;

    use super::*;

    fn volumes(names: &[&str]) -> Vec<VolumeSpec> {
        names
            .iter()
            .map(|n| VolumeSpec {
                name: n.to_string(),
            })
            .collect()
    }

    #[test]
    fn volume_paths_never_leave_the_root() {
        let root = Path::new("/data/volumes");
        assert_eq!(
            volume_dir(root, "web", "data").expect("plain names"),
            PathBuf::from("/data/volumes/web/data")
        );
        for (sandbox, volume) in [
            ("..", "data"),
            ("web", ".."),
            ("web", "a/b"),
            ("web", "/etc"),
            ("", "data"),
            ("web", "."),
            ("web", ""),
        ] {
            assert!(
                volume_dir(root, sandbox, volume).is_err(),
                "{sandbox:?}/{volume:?} accepted"
            );
        }
        assert!(volume_dir(Path::new("rel"), "web", "data").is_err());
    }

    #[test]
    fn mounts_are_rbind_and_honour_read_only() {
        let c = ContainerSpec {
            name: "app".into(),
            mounts: vec![
                MountSpec {
                    volume: "data".into(),
                    path: "/data".into(),
                    read_only: false,
                },
                MountSpec {
                    volume: "data".into(),
                    path: "/ro".into(),
                    read_only: true,
                },
            ],
            ..Default::default()
        };
        let got = bind_mounts(Path::new("/v"), "web", &volumes(&["data"]), &c).expect("mounts");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].typ().as_deref(), Some("bind"));
        assert_eq!(got[0].source().as_deref(), Some(Path::new("/v/web/data")));
        assert_eq!(got[0].destination(), Path::new("/data"));
        let options = |m: &Mount| m.options().clone().unwrap_or_default();
        assert_eq!(options(&got[0]), ["rbind", "rprivate", "rw"]);
        assert_eq!(options(&got[1]), ["rbind", "rprivate", "ro"]);
        assert!(bind_mounts(Path::new("/v"), "web", &volumes(&[]), &c).is_err());
    }

    #[tokio::test]
    async fn dry_run_plans_the_volume_and_creates_nothing_while_a_real_run_creates_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("volumes");
        let exec = Executor::dry_run();
        ensure_volumes(&root, "web", &volumes(&["data"]), &exec)
            .await
            .expect("plan");
        let plan = exec.plan();
        assert_eq!(plan.actions().len(), 1);
        assert_eq!(plan.actions()[0].target, "volume/web/data");
        assert!(!root.exists(), "dry-run created {}", root.display());

        let real = Executor::real();
        ensure_volumes(&root, "web", &volumes(&["data"]), &real)
            .await
            .expect("create");
        assert!(root.join("web/data").is_dir());
        std::fs::write(root.join("web/data/keep"), b"x").expect("write");
        ensure_volumes(&root, "web", &volumes(&["data"]), &real)
            .await
            .expect("again");
        assert!(root.join("web/data/keep").exists(), "contents are kept");
        remove_volumes(&root, "web", &real, "deleted")
            .await
            .expect("remove");
        assert!(!root.join("web").exists());
    }
}
