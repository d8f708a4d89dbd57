//! The controller flags shared by `converge up`, `converge controller` and `converge
//! reconcile` (DESIGN.md section 4, Contract), and their validated form.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use converge_reconcilers::containerd::DEFAULT_NAMESPACE;
use converge_reconcilers::network::{DEFAULT_BRIDGE, DEFAULT_SUBNET, NetworkConfig};
use converge_reconcilers::sandbox::network::Ipv4Net;

/// Default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/converge";
/// Default `--containerd-socket`.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Default `--containerd-root`.
pub const DEFAULT_CONTAINERD_ROOT: &str = "/var/lib/containerd";

/// Parses a duration such as `30s`, `5m`, `1h` or `1h30m`; zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s, 5m or 1h: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

fn parse_percent(s: &str) -> Result<u8, String> {
    match s.trim_end_matches('%').parse::<u8>() {
        Ok(p) if (1..=100).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 1 to 100")),
    }
}

/// The daemon flags of the Contract, as given on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerFlags {
    /// Where the store, artifacts, logs and sockets live.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// containerd's gRPC socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTAINERD_SOCKET)]
    pub containerd_socket: PathBuf,
    /// containerd's root directory: image GC watches the disk usage of its filesystem.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONTAINERD_ROOT, hide = true)]
    pub containerd_root: PathBuf,
    /// containerd namespace converge's objects live in.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// This node's id (default: the host name).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Watch, queue and reconcile, but record and log every change instead of making it.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<SocketAddr>,
    /// Period of the level-triggered resync.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub resync: Duration,
    /// Concurrent reconciles.
    #[arg(long, value_name = "N", default_value_t = NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN))]
    pub workers: NonZeroU32,
    /// Sustained retries and requeues per second.
    #[arg(long, value_name = "N", default_value_t = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN))]
    pub qps: NonZeroU32,
    /// Retries and requeues allowed at once.
    #[arg(long, value_name = "N", default_value_t = NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN))]
    pub burst: NonZeroU32,
    /// How long an unowned container may live before the orphan reconciler removes it.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_duration)]
    pub orphan_grace: Duration,
    /// Period of image and blob garbage collection.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub gc_interval: Duration,
    /// How long an unreferenced blob is kept before collection.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub blob_grace: Duration,
    /// Disk use (percent) above which collection turns aggressive.
    #[arg(long, value_name = "PCT", default_value = "85", value_parser = parse_percent)]
    pub disk_high: u8,
    /// Disk use (percent) aggressive collection brings usage back under.
    #[arg(long, value_name = "PCT", default_value = "80", value_parser = parse_percent)]
    pub disk_low: u8,
    /// Also run sandboxes that name no node. On by default when `--node-id` is not given
    /// (one machine, as DESIGN.md puts it: "or empty on a single node"), and always for
    /// `converge up`; a node of a cluster is started with `--node-id` and runs only its own.
    #[arg(long)]
    pub single_node: bool,
    /// runc state root passed to task shims (for a private containerd; default: runc's own).
    #[arg(long, value_name = "DIR", hide = true)]
    pub runc_root: Option<PathBuf>,
    /// The program containerd's shims run as the containers' log driver (timestamped,
    /// rotated logs; see docs/logs.md). The `converge` binary sets itself here; without it,
    /// output goes raw to the log files.
    #[arg(long, value_name = "PATH", hide = true)]
    pub log_driver: Option<PathBuf>,
    /// SIGTERM-to-SIGKILL grace for sandboxes that set none.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub stop_grace: Duration,
    /// First delay between restarts of an exited container (doubling up to 5 min).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub restart_backoff: Duration,
    /// Host bridge sandboxes are attached to (created if missing).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_BRIDGE, value_parser = parse_bridge)]
    pub bridge: String,
    /// Subnet sandbox addresses come from; its first address is the bridge's gateway.
    #[arg(long, value_name = "CIDR", default_value = DEFAULT_SUBNET, value_parser = parse_subnet)]
    pub subnet: Ipv4Net,
    /// Where sandbox network namespaces are pinned (default: `<data-dir>/run`).
    #[arg(long, value_name = "DIR", hide = true)]
    pub run_dir: Option<PathBuf>,
    /// Run sandboxes on the host's network: no bridge, namespaces or addresses.
    #[arg(long)]
    pub host_network: bool,
}

/// Parses `--bridge`: an interface name of 1 to 15 bytes without `/` or whitespace.
pub fn parse_bridge(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains('/') || s.chars().any(char::is_whitespace) {
        return Err(format!(
            "{s:?} is not an interface name (1-15 bytes, no '/' or spaces)"
        ));
    }
    Ok(s.to_string())
}

/// Parses `--subnet`: an IPv4 CIDR (host bits dropped) with room for a gateway and
/// sandboxes (prefix /30 or shorter).
pub fn parse_subnet(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|e| format!("{s:?} is not an IPv4 CIDR such as 10.88.0.0/16: {e}"))?;
    if net.prefix_len() > 30 {
        return Err(format!(
            "{s} leaves no room for sandboxes (use /30 or shorter)"
        ));
    }
    Ok(net.trunc())
}

/// Why the flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// `--disk-low` is not below `--disk-high`.
    #[error("--disk-low ({low}) must be below --disk-high ({high})")]
    DiskThresholds {
        /// `--disk-low`.
        low: u8,
        /// `--disk-high`.
        high: u8,
    },
    /// No `--node-id` and the host name cannot be read.
    #[error("no --node-id given and the host name cannot be read")]
    Hostname(#[source] std::io::Error),
    /// The node id is empty.
    #[error("--node-id must not be empty")]
    EmptyNodeId,
    /// The data directory cannot be created or resolved.
    #[error("cannot use the data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The settings of the GC reconcilers (orphans, images, blobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorConfig {
    /// `--orphan-grace`.
    pub orphan_grace: Duration,
    /// `--gc-interval`.
    pub gc_interval: Duration,
    /// `--blob-grace`.
    pub blob_grace: Duration,
    /// `--disk-high`, percent.
    pub disk_high: u8,
    /// `--disk-low`, percent.
    pub disk_low: u8,
}

/// The validated controller configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Absolute data directory (created if missing).
    pub data_dir: PathBuf,
    /// containerd socket.
    pub containerd_socket: PathBuf,
    /// containerd root directory (its filesystem is what disk pressure is measured on).
    pub containerd_root: PathBuf,
    /// containerd namespace.
    pub namespace: String,
    /// This node's id.
    pub node_id: String,
    /// Dry-run mode.
    pub dry_run: bool,
    /// HTTP endpoint address.
    pub http: Option<SocketAddr>,
    /// Resync period.
    pub resync: Duration,
    /// Worker count.
    pub workers: usize,
    /// Token bucket rate.
    pub qps: NonZeroU32,
    /// Token bucket burst.
    pub burst: NonZeroU32,
    /// Sandboxes naming no node are ours.
    pub single_node: bool,
    /// runc root for the shims.
    pub runc_root: Option<PathBuf>,
    /// The log driver program, if any.
    pub log_driver: Option<PathBuf>,
    /// Default stop grace.
    pub stop_grace: Duration,
    /// First restart delay.
    pub restart_backoff: Duration,
    /// Settings of the GC reconcilers.
    pub collectors: CollectorConfig,
    /// How the controller authenticates to the entity server (the global `--token-file`).
    pub client: converge_watch::ClientOptions,
    /// Entity servers tried after the first when it stops answering (`converge controller
    /// --fallback-server`).
    pub fallback_servers: Vec<converge_watch::ServerAddress>,
    /// The CA an `https` registry is verified with (the global `--tls-ca`); the puller also
    /// sends `client.token` to the registry.
    pub registry_tls: Option<converge_watch::client::ClientTls>,
    /// Sandbox networking (`--bridge`, `--subnet`, run dir); `None` with `--host-network`.
    pub network: Option<NetworkConfig>,
}

impl DaemonConfig {
    /// `<data_dir>/logs`, where container output goes.
    pub fn log_root(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
}

impl ControllerFlags {
    /// Checks the flags, creates the data directory and makes it absolute. Fails with a
    /// [`FlagError`] naming the flag; nothing else is created on failure.
    pub fn validate(&self) -> Result<DaemonConfig, FlagError> {
        if self.disk_low >= self.disk_high {
            return Err(FlagError::DiskThresholds {
                low: self.disk_low,
                high: self.disk_high,
            });
        }
        let node_id = match &self.node_id {
            Some(id) => id.trim().to_string(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_err(FlagError::Hostname)?
                .trim()
                .to_string(),
        };
        if node_id.is_empty() {
            return Err(FlagError::EmptyNodeId);
        }
        let data_dir_err = |source| FlagError::DataDir {
            path: self.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.data_dir).map_err(data_dir_err)?;
        let data_dir = std::fs::canonicalize(&self.data_dir).map_err(data_dir_err)?;
        let network = (!self.host_network).then(|| NetworkConfig {
            bridge: self.bridge.clone(),
            subnet: self.subnet,
            run_dir: self.run_dir.as_ref().map_or_else(
                || data_dir.join("run"),
                |dir| std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            ),
        });
        Ok(DaemonConfig {
            data_dir,
            containerd_socket: self.containerd_socket.clone(),
            containerd_root: self.containerd_root.clone(),
            namespace: self.namespace.clone(),
            node_id,
            dry_run: self.dry_run,
            http: self.http,
            resync: self.resync,
            workers: usize::try_from(self.workers.get()).unwrap_or(usize::MAX),
            qps: self.qps,
            burst: self.burst,
            single_node: self.single_node || self.node_id.is_none(),
            runc_root: self.runc_root.clone(),
            log_driver: self.log_driver.clone(),
            stop_grace: self.stop_grace,
            restart_backoff: self.restart_backoff,
            collectors: CollectorConfig {
                orphan_grace: self.orphan_grace,
                gc_interval: self.gc_interval,
                blob_grace: self.blob_grace,
                disk_high: self.disk_high,
                disk_low: self.disk_low,
            },
            client: converge_watch::ClientOptions::default(),
            fallback_servers: Vec::new(),
            registry_tls: None,
            network,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        flags: ControllerFlags,
    }

    fn parse(args: &[&str]) -> Result<ControllerFlags, clap::Error> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        Cmd::try_parse_from(argv).map(|c| c.flags)
    }

    #[test]
    fn durations_parse_seconds_minutes_and_hours() {
        let f = parse(&[
            "--resync",
            "30s",
            "--orphan-grace",
            "5m",
            "--gc-interval",
            "1h",
        ])
        .expect("flags");
        assert_eq!(f.resync, Duration::from_secs(30));
        assert_eq!(f.orphan_grace, Duration::from_secs(300));
        assert_eq!(f.gc_interval, Duration::from_secs(3600));
        assert_eq!(f.blob_grace, Duration::from_secs(3600), "default");
    }

    #[test]
    fn bad_durations_and_percentages_are_refused_with_the_flag_named() {
        let err = parse(&["--resync", "soon"]).expect_err("refused");
        assert!(err.to_string().contains("--resync"), "{err}");
        assert!(parse(&["--resync", "0s"]).is_err());
        assert!(parse(&["--disk-high", "101"]).is_err());
        assert!(parse(&["--workers", "0"]).is_err());
    }

    #[test]
    fn disk_low_must_stay_below_disk_high() {
        let f = parse(&["--disk-high", "70", "--disk-low", "80", "--node-id", "n"]).expect("flags");
        assert!(matches!(
            f.validate(),
            Err(FlagError::DiskThresholds { .. })
        ));
    }

    #[test]
    fn validation_makes_the_data_dir_absolute_and_keeps_the_collector_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("d");
        let f = parse(&[
            "--data-dir",
            data.to_str().expect("utf8"),
            "--node-id",
            "n1",
        ])
        .expect("flags");
        let c = f.validate().expect("valid");
        assert!(c.data_dir.is_absolute() && c.data_dir.exists());
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.collectors.disk_high, 85);
        assert_eq!(c.collectors.disk_low, 80);
        assert_eq!(c.log_root(), c.data_dir.join("logs"));
    }

    #[test]
    fn networking_defaults_to_converge0_on_10_88_under_the_data_dir_unless_host_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().to_str().expect("utf8");
        let c = parse(&["--data-dir", data, "--node-id", "n"])
            .expect("flags")
            .validate()
            .expect("valid");
        let net = c.network.expect("networking on by default");
        assert_eq!(net.bridge, "converge0");
        assert_eq!(net.subnet.to_string(), "10.88.0.0/16");
        assert_eq!(net.run_dir, c.data_dir.join("run"));
        let host = parse(&["--data-dir", data, "--node-id", "n", "--host-network"])
            .expect("flags")
            .validate()
            .expect("valid");
        assert_eq!(host.network, None);
        assert!(parse(&["--subnet", "10.1.2.3/31"]).is_err());
        assert!(parse(&["--subnet", "nonsense"]).is_err());
        assert!(parse(&["--bridge", "a-name-that-is-far-too-long"]).is_err());
        let sub = parse(&["--subnet", "10.199.7.9/24"]).expect("flags");
        assert_eq!(sub.subnet.to_string(), "10.199.7.0/24");
    }
}
