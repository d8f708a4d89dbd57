//! A private etcd cluster for one test: 1 or 3 members on free loopback ports, data in a temp dir.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::unique_name;

/// How long `start` and `restart_member` wait for members to be healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a private etcd cluster could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdClusterError {
    /// Only clusters of 1 or 3 members are supported.
    #[error("a test cluster has 1 or 3 members, not {0}")]
    Size(usize),
    /// There is no member with this index.
    #[error("no member {index} in a cluster of {members}")]
    NoMember {
        /// The index asked for.
        index: usize,
        /// How many members the cluster has.
        members: usize,
    },
    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A member exited before it was healthy.
    #[error("etcd member {name} exited during start-up ({status}); its log ends with:\n{log_tail}")]
    Exited {
        /// The member's name.
        name: String,
        /// The exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A member did not become healthy in time.
    #[error("etcd member {name} not healthy within {timeout:?}; its log ends with:\n{log_tail}")]
    NotReady {
        /// The member's name.
        name: String,
        /// How long we waited.
        timeout: Duration,
        /// The last lines of its log.
        log_tail: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EtcdClusterError {
    let context = context.into();
    move |source| EtcdClusterError::Io { context, source }
}

/// One member: its name, ports and (while running) its process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// An etcd cluster private to one test. Every member listens on 127.0.0.1 only (client and
/// peer ports picked free at start), keeps its data and log in one fresh temp dir (under
/// `/dev/shm` when available), and the
/// cluster token is unique, so parallel tests never join each other's clusters. Dropping it
/// kills every member by pid and removes the temp dir; nothing else is ever touched.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: Option<TempDir>,
    path: PathBuf,
    token: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts a cluster of `members` (1 or 3) etcd processes and waits until each member
    /// answers with a leader elected. Fails with the tail of a member's log when it exits
    /// early or is not healthy within 30 s; whatever was started is killed on failure.
    pub async fn start(members: usize) -> Result<EtcdCluster, EtcdClusterError> {
        if members != 1 && members != 3 {
            return Err(EtcdClusterError::Size(members));
        }
        let dir = temp_dir().map_err(io_err("create temp dir for etcd"))?;
        let path = dir.path().to_path_buf();
        let ports = free_ports(members * 2)?;
        let members = ports
            .chunks(2)
            .enumerate()
            .map(|(i, pair)| Member {
                name: format!("m{i}"),
                client_port: pair[0],
                peer_port: pair[1],
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            dir: Some(dir),
            path,
            token: unique_name("etcd-test"),
            members,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    /// The client URLs of all members (`http://127.0.0.1:PORT`), in member order, including
    /// members that are currently killed.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The temp dir holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The pid of member `i`, or `None` if it is killed or does not exist.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.child.as_ref().map(Child::id)
    }

    /// The index of the member that is currently the raft leader, or `None` if no running
    /// member reports itself leader (e.g. during an election).
    pub async fn leader(&self) -> Option<usize> {
        for (i, member) in self.members.iter().enumerate() {
            if member.child.is_none() {
                continue;
            }
            if let Some((own, leader)) = status_of(&member.client_url()).await
                && own == leader
            {
                return Some(i);
            }
        }
        None
    }

    /// SIGKILLs member `i` (by its pid) and reaps it. Killing a killed member does nothing.
    pub fn kill_member(&mut self, i: usize) -> Result<(), EtcdClusterError> {
        let members = self.members.len();
        let member = self
            .members
            .get_mut(i)
            .ok_or(EtcdClusterError::NoMember { index: i, members })?;
        if let Some(mut child) = member.child.take() {
            tracing::debug!(pid = child.id(), member = %member.name, "killing etcd member");
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts member `i` again on its data dir and ports (killing it first if it still runs)
    /// and waits until it is healthy.
    pub async fn restart_member(&mut self, i: usize) -> Result<(), EtcdClusterError> {
        self.kill_member(i)?;
        self.spawn(i)?;
        self.wait_healthy(i).await
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.path.join(format!("m{i}.log"))
    }

    fn spawn(&mut self, i: usize) -> Result<(), EtcdClusterError> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let log_path = self.log_path(i);
        let data_dir = self.path.join(format!("m{i}.etcd"));
        let member = &self.members[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("open {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io_err("clone etcd log handle"))?;
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(member.client_url())
            .arg("--advertise-client-urls")
            .arg(member.client_url())
            .arg("--listen-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            // ETCD_* variables of the environment must not configure a test member.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err("spawn etcd (is the etcd-server package installed?)"))?;
        tracing::debug!(pid = child.id(), member = %member.name, "etcd member started");
        self.members[i].child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&mut self, i: usize) -> Result<(), EtcdClusterError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = self.members[i].client_url();
        loop {
            let name = self.members[i].name.clone();
            if let Some(child) = self.members[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.members[i].child = None;
                return Err(EtcdClusterError::Exited {
                    name,
                    status: status.to_string(),
                    log_tail: self.log_tail(i),
                });
            }
            if has_leader(&url).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EtcdClusterError::NotReady {
                    name,
                    timeout: START_TIMEOUT,
                    log_tail: self.log_tail(i),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let text = fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill_member(i);
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            tracing::warn!(error = %e, "cannot remove the etcd temp dir");
        }
    }
}

/// True when the member at `url` answers a status call naming a leader.
async fn has_leader(url: &str) -> bool {
    matches!(status_of(url).await, Some((_, leader)) if leader != 0)
}

/// The member id of the member at `url` and the id of the leader it knows (0 = none), or
/// `None` if it does not answer within the probe timeout.
async fn status_of(url: &str) -> Option<(u64, u64)> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(PROBE_TIMEOUT)
        .with_timeout(PROBE_TIMEOUT);
    let probe = async {
        let mut client = etcd_client::Client::connect([url], Some(options))
            .await
            .ok()?;
        let status = client.status().await.ok()?;
        let own = status.header()?.member_id();
        Some((own, status.leader()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

/// Each member preallocates a 64 MiB write-ahead log; in memory (`/dev/shm`, when it is a
/// writable directory) parallel test clusters neither fill the disk nor wait on fsync.
/// Elsewhere the default temp dir is used.
fn temp_dir() -> io::Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("etcd-");
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return Ok(dir);
    }
    builder.tempdir()
}

/// Picks `n` distinct free loopback ports by binding port 0 and releasing the listeners.
fn free_ports(n: usize) -> Result<Vec<u16>, EtcdClusterError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(io_err("bind a free loopback port")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(io_err("read a bound port"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_cluster_kills_its_members_and_removes_its_dir() {
        let cluster = EtcdCluster::start(1).await.expect("start");
        let pid = cluster.pid(0).expect("running");
        let dir = cluster.dir().to_path_buf();
        assert!(dir.join("m0.etcd").is_dir());
        drop(cluster);
        assert!(!dir.exists(), "temp dir left behind");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd {pid} still runs"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_members_keep_a_leader_through_one_kill_and_restart() {
        let mut cluster = EtcdCluster::start(3).await.expect("start");
        assert_eq!(cluster.endpoints().len(), 3);
        let leader = cluster.leader().await.expect("a leader");
        cluster.kill_member(leader).expect("kill");
        assert_eq!(cluster.pid(leader), None);
        let deadline = Instant::now() + START_TIMEOUT;
        while cluster.leader().await.is_none() {
            assert!(Instant::now() < deadline, "no new leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.restart_member(leader).await.expect("restart");
        assert!(cluster.pid(leader).is_some());
    }

    #[tokio::test]
    async fn only_one_or_three_members_are_accepted() {
        assert!(matches!(
            EtcdCluster::start(2).await,
            Err(EtcdClusterError::Size(2))
        ));
    }
}
