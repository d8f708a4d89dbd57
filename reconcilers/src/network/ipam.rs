//! IP address management for sandboxes: one address per sandbox id, persisted atomically as JSON under the data dir.
//!
//! The file (`<data-dir>/network/ipam.json`) is rewritten whole on every change: written
//! to a temp file, fsynced, renamed over the old one, and the directory fsynced, so a
//! crash leaves either the old or the new allocations, never a torn file. Memory is
//! updated only after the file is, so a failed write changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::sandbox_net::{TeardownReport, network_name};

/// The allocation file's name inside `<data-dir>/network/`.
const FILE_NAME: &str = "ipam.json";
/// The on-disk format version.
const FORMAT_VERSION: u32 = 1;

/// Serialises every reload-change-persist of every [`Ipam`] in this process, so two
/// instances over the same file (the sandbox reconciler's and the orphan sweep's) never
/// overwrite each other's changes.
static FILE_LOCK: Mutex<()> = Mutex::new(());

/// Errors from the address allocator.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the subnet is taken.
    #[error("no free address left in {subnet} ({allocated} allocated)")]
    Exhausted {
        /// The subnet.
        subnet: Ipv4Net,
        /// How many addresses are allocated.
        allocated: usize,
    },
    /// The subnet is too small to hold a gateway and a sandbox.
    #[error("subnet {subnet} is too small for sandboxes (need /30 or larger)")]
    SubnetTooSmall {
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// The file on disk was written for another subnet; nothing was changed.
    #[error(
        "{path} holds allocations for {on_disk}, not {requested}; release them or keep the old subnet"
    )]
    SubnetMismatch {
        /// The file.
        path: PathBuf,
        /// The subnet the file was written for.
        on_disk: Ipv4Net,
        /// The subnet asked for now.
        requested: Ipv4Net,
    },
    /// The file on disk could not be parsed or has an address outside its subnet.
    #[error("allocation file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the file failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A release proof was made for a different sandbox than the teardown report.
    #[error("teardown report for network {report} does not belong to sandbox {sandbox_id:?}")]
    WrongTeardown {
        /// The sandbox id the proof was asked for.
        sandbox_id: String,
        /// The network name in the report.
        report: String,
    },
}

/// Proof that a sandbox's containers and network namespace are gone, required by
/// [`Ipam::release`] so that an address is never handed out while something may still use it.
///
/// Made only from a [`TeardownReport`] of that sandbox; the caller must have removed the
/// sandbox's containers before tearing its network down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    sandbox_id: String,
}

impl Released {
    /// The proof for `sandbox_id` after its network was torn down (`report`). Fails with
    /// [`IpamError::WrongTeardown`] if the report is for another sandbox's network.
    pub fn after_teardown(sandbox_id: &str, report: &TeardownReport) -> Result<Self, IpamError> {
        if report.name != network_name(sandbox_id) {
            return Err(IpamError::WrongTeardown {
                sandbox_id: sandbox_id.to_string(),
                report: report.name.clone(),
            });
        }
        Ok(Self {
            sandbox_id: sandbox_id.to_string(),
        })
    }

    /// The sandbox whose address may be released.
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }
}

/// The on-disk form.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Allocations {
    version: u32,
    subnet: Ipv4Net,
    /// The last address handed out; the search for a free one starts after it so that a
    /// just-released address is not reused at once (stale ARP entries, conntrack).
    last: Option<Ipv4Addr>,
    by_sandbox: BTreeMap<String, Ipv4Addr>,
}

/// Hands out sandbox addresses from one subnet, persisted under the data dir.
///
/// Never hands out the network, gateway (first host) or broadcast address, or one
/// already allocated. Safe to share between tasks (one lock around each operation).
/// Several instances over one file in one process stay coherent: allocate and release
/// re-read the file under a process-wide lock before changing it. One process per data dir.
#[derive(Debug)]
pub struct Ipam {
    path: PathBuf,
    subnet: Ipv4Net,
    state: Mutex<Allocations>,
}

impl Ipam {
    /// Opens (or starts) the allocations in `<data_dir>/network/ipam.json` for `subnet`.
    ///
    /// Fails with [`IpamError::SubnetMismatch`] if the file was written for another subnet
    /// and [`IpamError::Corrupt`] if it cannot be read back; in both cases the file is left
    /// untouched.
    pub fn open(data_dir: &Path, subnet: Ipv4Net) -> Result<Self, IpamError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        let dir = data_dir.join("network");
        let path = dir.join(FILE_NAME);
        let state = match fs::read(&path) {
            Ok(bytes) => {
                let state: Allocations =
                    serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                check_loaded(&path, &state, subnet)?;
                state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Allocations {
                version: FORMAT_VERSION,
                subnet,
                last: None,
                by_sandbox: BTreeMap::new(),
            },
            Err(source) => {
                return Err(IpamError::Io {
                    action: "reading",
                    path,
                    source,
                });
            }
        };
        Ok(Self {
            path,
            subnet,
            state: Mutex::new(state),
        })
    }

    /// The subnet addresses come from.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The address of `sandbox_id`: the one it already has, or a newly allocated free one
    /// (persisted before it is returned). Fails with [`IpamError::Exhausted`] when the
    /// subnet is full, changing nothing.
    pub fn allocate(&self, sandbox_id: &str) -> Result<Ipv4Addr, IpamError> {
        let _file = FILE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.lock();
        self.reload(&mut state)?;
        if let Some(ip) = state.by_sandbox.get(sandbox_id) {
            return Ok(*ip);
        }
        let used: HashSet<Ipv4Addr> = state.by_sandbox.values().copied().collect();
        let ip = self
            .next_free(state.last, &used)
            .ok_or(IpamError::Exhausted {
                subnet: self.subnet,
                allocated: used.len(),
            })?;
        let mut next = state.clone();
        next.by_sandbox.insert(sandbox_id.to_string(), ip);
        next.last = Some(ip);
        self.persist(&next)?;
        *state = next;
        tracing::debug!(sandbox = sandbox_id, %ip, "address allocated");
        Ok(ip)
    }

    /// The address currently allocated to `sandbox_id`, if any.
    pub fn get(&self, sandbox_id: &str) -> Option<Ipv4Addr> {
        self.lock().by_sandbox.get(sandbox_id).copied()
    }

    /// Frees the address of the sandbox named in `proof`; returns it, or `None` if it had
    /// none (idempotent). The proof guarantees its containers and netns are gone.
    pub fn release(&self, proof: Released) -> Result<Option<Ipv4Addr>, IpamError> {
        let _file = FILE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.lock();
        self.reload(&mut state)?;
        if !state.by_sandbox.contains_key(&proof.sandbox_id) {
            return Ok(None);
        }
        let mut next = state.clone();
        let freed = next.by_sandbox.remove(&proof.sandbox_id);
        self.persist(&next)?;
        *state = next;
        tracing::debug!(sandbox = proof.sandbox_id, ip = ?freed, "address released");
        Ok(freed)
    }

    /// The sandbox ids holding an address that are not in `live_ids`, with their
    /// addresses. Frees nothing: the caller tears each down and releases it with proof.
    pub fn reconcile<'a>(
        &self,
        live_ids: impl IntoIterator<Item = &'a str>,
    ) -> BTreeMap<String, Ipv4Addr> {
        let live: BTreeSet<&str> = live_ids.into_iter().collect();
        self.lock()
            .by_sandbox
            .iter()
            .filter(|(id, _)| !live.contains(id.as_str()))
            .map(|(id, ip)| (id.clone(), *ip))
            .collect()
    }

    /// All current allocations, by sandbox id.
    pub fn allocations(&self) -> BTreeMap<String, Ipv4Addr> {
        self.lock().by_sandbox.clone()
    }

    /// Replaces `state` with the file's contents when the file exists (another instance in
    /// this process may have changed it); a missing file keeps memory as is. Fails like
    /// [`Ipam::open`], changing nothing.
    fn reload(&self, state: &mut Allocations) -> Result<(), IpamError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(IpamError::Io {
                    action: "reading",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let loaded: Allocations =
            serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        check_loaded(&self.path, &loaded, self.subnet)?;
        *state = loaded;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Allocations> {
        // Memory changes only after a successful write, so a poisoned state is consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The first free usable address after `last`, wrapping around once.
    fn next_free(&self, last: Option<Ipv4Addr>, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (first, end) = usable_range(self.subnet);
        let count = end - first + 1;
        let start = match last {
            Some(ip) if (first..=end).contains(&u32::from(ip)) => u32::from(ip) - first + 1,
            _ => 0,
        };
        (0..count)
            .map(|i| Ipv4Addr::from(first + (start + i) % count))
            .find(|ip| !used.contains(ip))
    }

    fn persist(&self, state: &Allocations) -> Result<(), IpamError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| IpamError::Io {
                action,
                path,
                source,
            }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| IpamError::Corrupt {
            path: self.path.clone(),
            reason: format!("encoding: {e}"),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(&bytes).map_err(io("writing", &tmp))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(io("renaming into place", &self.path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))
    }
}

/// The first and last address a sandbox may get (gateway = network + 1 is excluded).
fn usable_range(subnet: Ipv4Net) -> (u32, u32) {
    (
        u32::from(subnet.network()) + 2,
        u32::from(subnet.broadcast()) - 1,
    )
}

fn check_loaded(path: &Path, state: &Allocations, subnet: Ipv4Net) -> Result<(), IpamError> {
    if state.version != FORMAT_VERSION {
        return Err(IpamError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("unknown format version {}", state.version),
        });
    }
    if state.subnet != subnet {
        return Err(IpamError::SubnetMismatch {
            path: path.to_path_buf(),
            on_disk: state.subnet,
            requested: subnet,
        });
    }
    let (first, end) = usable_range(subnet);
    let mut seen = HashSet::new();
    for (id, ip) in &state.by_sandbox {
        if !(first..=end).contains(&u32::from(*ip)) || !seen.insert(*ip) {
            return Err(IpamError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("sandbox {id:?} has unusable or duplicate address {ip}"),
            });
        }
    }
    Ok(())
}
