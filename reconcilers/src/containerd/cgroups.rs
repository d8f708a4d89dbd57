//! Resource usage of a converge container read from its cgroup (v1 or v2), at the path
//! converge itself puts in the runtime spec ([`super::cgroup_path`]).
//!
//! Reading files instead of asking containerd (`Tasks.Metrics`) keeps this synchronous
//! (a Prometheus collector can call it at scrape time), needs no connection (the CLI uses
//! it too) and works the same for the daemon and `converge describe`. See `docs/sandbox.md`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where cgroup hierarchies are mounted on a normal host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The kernel's value for "no limit" in cgroup v1 (`PAGE_COUNTER_MAX` pages), and above.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// Why a cgroup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file of the cgroup could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file held something that is not what the kernel writes there.
    #[error("unexpected content in {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
}

/// What one container's cgroup says about it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupUsage {
    /// CPU time used by all its processes since the cgroup was made, in seconds.
    pub cpu_seconds: f64,
    /// Memory charged to it now (including page cache), in bytes.
    pub memory_bytes: u64,
    /// Highest `memory_bytes` seen, when the kernel keeps it (v1; v2 from Linux 5.19).
    pub memory_peak_bytes: Option<u64>,
    /// Its memory limit, when one is set.
    pub memory_limit_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed in it (0 when the kernel does not count).
    pub oom_kills: u64,
}

/// How the host's cgroups are laid out, as runc (cgroupfs driver) uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// The unified hierarchy (cgroup v2) at `root`.
    V2 {
        /// Mount point, normally `/sys/fs/cgroup`.
        root: PathBuf,
    },
    /// Separate hierarchies (cgroup v1, also "hybrid" hosts: runc uses v1 there).
    V1 {
        /// Mount point of the `memory` hierarchy.
        memory: PathBuf,
        /// Mount point of the `cpuacct` hierarchy (often shared with `cpu`).
        cpuacct: PathBuf,
    },
}

impl CgroupLayout {
    /// The layout of this host, detected once: v2 when `/sys/fs/cgroup` is the unified
    /// hierarchy, else v1 with the `memory` and `cpuacct` mount points read from
    /// `/proc/self/mountinfo` (falling back to `/sys/fs/cgroup/<controller>`). Never fails.
    pub fn host() -> &'static CgroupLayout {
        static LAYOUT: OnceLock<CgroupLayout> = OnceLock::new();
        LAYOUT.get_or_init(|| {
            let root = Path::new(CGROUP_ROOT);
            if root.join("cgroup.controllers").exists() {
                return CgroupLayout::V2 {
                    root: root.to_path_buf(),
                };
            }
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            Self::v1_from_mountinfo(&mountinfo)
        })
    }

    /// The v1 layout described by the text of a `mountinfo` file.
    pub fn v1_from_mountinfo(mountinfo: &str) -> CgroupLayout {
        let mut memory = None;
        let mut cpuacct = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut fs = right.split_whitespace();
            if fs.next() != Some("cgroup") {
                continue;
            }
            let options = fs.nth(1).unwrap_or_default();
            let Some(point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let point = PathBuf::from(point.replace("\\040", " "));
            for option in options.split(',') {
                match option {
                    "memory" => memory = memory.or(Some(point.clone())),
                    "cpuacct" => cpuacct = cpuacct.or(Some(point.clone())),
                    _ => {}
                }
            }
        }
        let root = Path::new(CGROUP_ROOT);
        CgroupLayout::V1 {
            memory: memory.unwrap_or_else(|| root.join("memory")),
            cpuacct: cpuacct.unwrap_or_else(|| root.join("cpuacct")),
        }
    }

    /// The usage of the cgroup at `cgroup_path` (absolute within the hierarchy, as in the
    /// runtime spec); `None` when that cgroup does not exist (no task, or already deleted).
    /// Fails when it exists but a file of it cannot be read or parsed (it may also vanish
    /// half-way: callers treat a failure like an absent cgroup).
    pub fn usage(&self, cgroup_path: &str) -> Result<Option<CgroupUsage>, CgroupError> {
        let relative = cgroup_path.trim_start_matches('/');
        match self {
            CgroupLayout::V2 { root } => {
                let dir = root.join(relative);
                if !dir.is_dir() {
                    return Ok(None);
                }
                let usec = keyed(&dir.join("cpu.stat"), "usage_usec")?.unwrap_or(0);
                let limit = match read(&dir.join("memory.max"))?.trim() {
                    "max" => None,
                    text => Some(number(&dir.join("memory.max"), text)?),
                };
                Ok(Some(CgroupUsage {
                    cpu_seconds: usec as f64 / 1e6,
                    memory_bytes: single(&dir.join("memory.current"))?,
                    memory_peak_bytes: optional(&dir.join("memory.peak"))?,
                    memory_limit_bytes: limit,
                    oom_kills: keyed(&dir.join("memory.events"), "oom_kill")?.unwrap_or(0),
                }))
            }
            CgroupLayout::V1 { memory, cpuacct } => {
                let mem = memory.join(relative);
                if !mem.is_dir() {
                    return Ok(None);
                }
                let cpu = cpuacct.join(relative);
                let nanos = optional(&cpu.join("cpuacct.usage"))?.unwrap_or(0);
                let limit = single(&mem.join("memory.limit_in_bytes"))?;
                Ok(Some(CgroupUsage {
                    cpu_seconds: nanos as f64 / 1e9,
                    memory_bytes: single(&mem.join("memory.usage_in_bytes"))?,
                    memory_peak_bytes: optional(&mem.join("memory.max_usage_in_bytes"))?,
                    memory_limit_bytes: (limit < V1_UNLIMITED).then_some(limit),
                    oom_kills: keyed(&mem.join("memory.oom_control"), "oom_kill")?.unwrap_or(0),
                }))
            }
        }
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn number(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|e| CgroupError::Parse {
        path: path.display().to_string(),
        message: format!("{text:?} is not a number: {e}"),
    })
}

/// A file holding one number.
fn single(path: &Path) -> Result<u64, CgroupError> {
    number(path, &read(path)?)
}

/// [`single`], `None` when the file does not exist (older kernels lack some).
fn optional(path: &Path) -> Result<Option<u64>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => number(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The value of `key` in a flat keyed file (`key value` lines); `None` when the file or
/// the key is missing.
fn keyed(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CgroupError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    parse_keyed(&text, key).map(|v| number(path, v)).transpose()
}

fn parse_keyed<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn v1_mount_points_come_from_mountinfo() {
        let info = "\
35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:15 - cgroup cgroup rw,memory
36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
37 25 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            CgroupLayout::v1_from_mountinfo(info),
            CgroupLayout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpuacct: "/sys/fs/cgroup/cpu,cpuacct".into(),
            }
        );
    }

    #[test]
    fn v1_usage_reads_cpu_memory_peak_limit_and_oom_kills() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = CgroupLayout::V1 {
            memory: tmp.path().join("memory"),
            cpuacct: tmp.path().join("cpuacct"),
        };
        let mem = tmp.path().join("memory/converge/ns/c1");
        write(&mem, "memory.usage_in_bytes", "4096\n");
        write(&mem, "memory.max_usage_in_bytes", "8192\n");
        write(&mem, "memory.limit_in_bytes", "8388608\n");
        write(
            &mem,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(
            &tmp.path().join("cpuacct/converge/ns/c1"),
            "cpuacct.usage",
            "1500000000\n",
        );
        let usage = layout
            .usage("/converge/ns/c1")
            .expect("read")
            .expect("exists");
        assert_eq!(
            usage,
            CgroupUsage {
                cpu_seconds: 1.5,
                memory_bytes: 4096,
                memory_peak_bytes: Some(8192),
                memory_limit_bytes: Some(8 << 20),
                oom_kills: 2,
            }
        );
        assert_eq!(layout.usage("/converge/ns/gone").expect("read"), None);
    }

    #[test]
    fn v2_usage_reads_cpu_stat_and_memory_events() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = CgroupLayout::V2 {
            root: tmp.path().to_path_buf(),
        };
        let dir = tmp.path().join("converge/ns/c1");
        write(&dir, "cpu.stat", "usage_usec 250000\nuser_usec 1\n");
        write(&dir, "memory.current", "1024\n");
        write(&dir, "memory.max", "max\n");
        write(
            &dir,
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        let usage = layout
            .usage("/converge/ns/c1")
            .expect("read")
            .expect("exists");
        assert_eq!(usage.cpu_seconds, 0.25);
        assert_eq!(usage.memory_bytes, 1024);
        assert_eq!(
            usage.memory_peak_bytes, None,
            "no memory.peak on old kernels"
        );
        assert_eq!(usage.memory_limit_bytes, None);
        assert_eq!(usage.oom_kills, 1);
    }

    #[test]
    fn garbage_in_a_cgroup_file_is_a_parse_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = CgroupLayout::V2 {
            root: tmp.path().to_path_buf(),
        };
        let dir = tmp.path().join("converge/ns/c1");
        write(&dir, "memory.current", "lots\n");
        write(&dir, "memory.max", "max\n");
        assert!(matches!(
            layout.usage("/converge/ns/c1"),
            Err(CgroupError::Parse { .. })
        ));
    }
}
