//! The OCI runtime spec of a converge container, built with `oci-spec` from the image config and the sandbox's container spec.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use converge_watch::spec::ContainerSpec;
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_maskedpaths,
    get_default_readonly_paths,
};

/// `PATH` used when neither the image nor the container sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period used for CPU limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: i64 = 1_000;

/// Docker's default capability set: what a non-privileged container keeps.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::AuditWrite,
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Mknod,
    Capability::NetBindService,
    Capability::NetRaw,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

/// Why a runtime spec could not be built. Nothing is created when this happens.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The input cannot make a container (no command, unsupported user, bad limit).
    #[error("runtime spec for {container}: {field}: {message}")]
    Invalid {
        /// The container id.
        container: String,
        /// The offending field, e.g. `command` or `resources.memory_mb`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// `oci-spec` refused to build a part.
    #[error("runtime spec for {container}: building {part}")]
    Build {
        /// The container id.
        container: String,
        /// Which part.
        part: &'static str,
        /// The underlying error.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// Everything a container's runtime spec is made from.
#[derive(Debug, Clone)]
pub struct RuntimeSpecInput<'a> {
    /// containerd container id (also names the cgroup).
    pub container_id: &'a str,
    /// containerd namespace (part of the cgroup path).
    pub namespace: &'a str,
    /// Hostname inside the container.
    pub hostname: &'a str,
    /// The image's configuration (env, working dir, user, entrypoint, cmd).
    pub image: &'a ImageConfiguration,
    /// The container as the sandbox spec declares it.
    pub container: &'a ContainerSpec,
    /// Network namespace to join; `None` = the host's network.
    pub netns: Option<&'a Path>,
    /// Extra mounts (volumes), appended after the defaults.
    pub extra_mounts: Vec<Mount>,
}

/// The cgroup path converge gives a container: `/converge/<namespace>/<container-id>`.
pub fn cgroup_path(namespace: &str, container_id: &str) -> String {
    format!("/converge/{namespace}/{container_id}")
}

/// The process arguments: the container's `command` when given (it replaces the image's
/// entrypoint and cmd), otherwise the image's entrypoint followed by its cmd.
pub fn process_args(image: &ImageConfiguration, container: &ContainerSpec) -> Vec<String> {
    if !container.command.is_empty() {
        return container.command.clone();
    }
    let config = image.config().as_ref();
    let mut args: Vec<String> = config
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    args.extend(config.and_then(|c| c.cmd().clone()).unwrap_or_default());
    args
}

/// The environment: the image's `KEY=value` entries, overridden key by key by the
/// container's `env`; `PATH` defaults to [`DEFAULT_PATH`]. Sorted by key for stable specs.
pub fn process_env(image: &ImageConfiguration, container: &ContainerSpec) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let image_env = image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    for entry in image_env {
        let (k, v) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        env.insert(k.to_string(), v.to_string());
    }
    for (k, v) in &container.env {
        env.insert(k.clone(), v.clone());
    }
    env.entry("PATH".to_string())
        .or_insert_with(|| DEFAULT_PATH.to_string());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Parses the image's `User` (`""`, `root`, `uid` or `uid:gid`; numeric only, since names
/// would need the image's `/etc/passwd`). Errors name the value.
fn parse_user(container: &str, user: &str) -> Result<(u32, u32), SpecError> {
    let invalid = || SpecError::Invalid {
        container: container.to_string(),
        field: "image user",
        message: format!("{user:?} is not supported: use a numeric uid[:gid] or root"),
    };
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = match u {
        "" | "root" => 0,
        n => n.parse().map_err(|_| invalid())?,
    };
    let gid = match g {
        "" => uid,
        "root" => 0,
        n => n.parse().map_err(|_| invalid())?,
    };
    Ok((uid, gid))
}

fn mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, oci_spec::OciSpecError> {
    MountBuilder::default()
        .destination(PathBuf::from(destination))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

/// The default mounts: proc, /dev (tmpfs), devpts, shm, mqueue, sysfs (read-only).
pub fn default_mounts() -> Result<Vec<Mount>, oci_spec::OciSpecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ])
}

/// Builds the runtime spec: not privileged (Docker's default capabilities, no new
/// privileges, masked and read-only `/proc` paths, device cgroup deny-all with runc's
/// defaults), pid/ipc/uts/mount namespaces of its own, the given network namespace (or the
/// host's), memory and CPU limits from `resources`, cgroup under [`cgroup_path`], rootfs
/// `rootfs` (the snapshot mounted by the shim). Fails without side effects when there is
/// no command, the image user is not numeric, or a limit is out of range.
pub fn build_runtime_spec(input: &RuntimeSpecInput<'_>) -> Result<Spec, SpecError> {
    let id = input.container_id;
    let build = |part: &'static str| {
        move |source| SpecError::Build {
            container: id.to_string(),
            part,
            source,
        }
    };
    let args = process_args(input.image, input.container);
    if args.is_empty() {
        return Err(SpecError::Invalid {
            container: id.to_string(),
            field: "command",
            message: "neither the container nor its image gives a command".to_string(),
        });
    }
    let config = input.image.config().as_ref();
    let user = config.and_then(|c| c.user().clone()).unwrap_or_default();
    let (uid, gid) = parse_user(id, &user)?;
    let cwd = config
        .and_then(|c| c.working_dir().clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string());

    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(build("capabilities"))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(build("user"))?,
        )
        .args(args)
        .env(process_env(input.image, input.container))
        .cwd(PathBuf::from(cwd))
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()
                .map_err(build("rlimits"))?,
        ])
        .build()
        .map_err(build("process"))?;

    let mut namespaces: Vec<LinuxNamespace> = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(build("namespaces"))?,
        );
    }
    if let Some(netns) = input.netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(netns.to_path_buf())
                .build()
                .map_err(build("namespaces"))?,
        );
    }

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(build("devices"))?,
    ]);
    if let Some(limits) = &input.container.resources {
        if let Some(mb) = limits.memory_mb {
            let bytes = mb
                .checked_mul(1024 * 1024)
                .and_then(|b| i64::try_from(b).ok())
                .filter(|b| *b > 0)
                .ok_or_else(|| SpecError::Invalid {
                    container: id.to_string(),
                    field: "resources.memory_mb",
                    message: format!("{mb} MiB is out of range"),
                })?;
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(bytes)
                    .build()
                    .map_err(build("memory"))?,
            );
        }
        if let Some(millis) = limits.cpu_millis {
            let quota = millis
                .checked_mul(CPU_PERIOD_US / 1000)
                .and_then(|q| i64::try_from(q).ok())
                .filter(|q| *q > 0)
                .ok_or_else(|| SpecError::Invalid {
                    container: id.to_string(),
                    field: "resources.cpu_millis",
                    message: format!("{millis} millicores is out of range"),
                })?
                .max(MIN_CPU_QUOTA_US);
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(CPU_PERIOD_US)
                    .build()
                    .map_err(build("cpu"))?,
            );
        }
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(build("resources"))?)
        .cgroups_path(PathBuf::from(cgroup_path(input.namespace, id)))
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(build("linux"))?;

    let mut mounts = default_mounts().map_err(build("mounts"))?;
    mounts.extend(input.extra_mounts.iter().cloned());

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .map_err(build("root"))?,
        )
        .hostname(input.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(build("spec"))
}

#[cfg(test)]
mod tests;
