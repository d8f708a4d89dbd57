//! Port readiness: which TCP ports a process's network namespace listens on (`/proc/<pid>/net/tcp{,6}` via procfs), and waiting for expected ones.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use procfs::ProcError;
use procfs::net::TcpState;
use procfs::process::Process;

/// The longest pause between two looks of [`wait_for_ports`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The first pause of [`wait_for_ports`]; each following one doubles, up to
/// [`POLL_INTERVAL`] (a port that opens a few ms late is seen a few ms late, while a slow
/// one costs at most ten `/proc` reads a second).
pub const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Errors from reading listening ports or waiting for them.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// The process's socket tables could not be read (it may have exited).
    #[error("reading the TCP sockets of pid {pid}")]
    Proc {
        /// The pid.
        pid: i32,
        /// The procfs error.
        #[source]
        source: ProcError,
    },
    /// Some expected ports were still closed when the time was up.
    #[error("{0}")]
    NotOpen(PortsNotOpen),
}

/// Which expected ports never opened, and what was listening instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsNotOpen {
    /// Expected ports not in LISTEN when the time ran out.
    pub missing: BTreeSet<u16>,
    /// All ports that were in LISTEN at the last look.
    pub listening: BTreeSet<u16>,
}

impl fmt::Display for PortsNotOpen {
    /// For example `port 8080 never opened; listening on 8081` or
    /// `ports 80, 443 never opened; listening on nothing`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &BTreeSet<u16>| {
            set.iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let noun = if self.missing.len() == 1 {
            "port"
        } else {
            "ports"
        };
        write!(
            f,
            "{noun} {} never opened; listening on ",
            list(&self.missing)
        )?;
        if self.listening.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&list(&self.listening))
        }
    }
}

/// The TCP ports (IPv4 and IPv6) in LISTEN in the network namespace of process `pid`.
///
/// Blocking but quick (two small `/proc` reads). Fails with [`PortsError::Proc`] if the
/// process is gone or `/proc` cannot be read.
pub fn listening_ports(pid: i32) -> Result<BTreeSet<u16>, PortsError> {
    let proc_err = |source| PortsError::Proc { pid, source };
    let process = Process::new(pid).map_err(proc_err)?;
    let mut ports = BTreeSet::new();
    for table in [process.tcp(), process.tcp6()] {
        let entries = match table {
            Ok(entries) => entries,
            // A kernel without IPv6 has no tcp6 table; that is not an error.
            Err(ProcError::NotFound(_)) => continue,
            Err(e) => return Err(proc_err(e)),
        };
        ports.extend(
            entries
                .into_iter()
                .filter(|entry| entry.state == TcpState::Listen)
                .map(|entry| entry.local_address.port()),
        );
    }
    Ok(ports)
}

/// Waits until every port in `ports` is in LISTEN in `pid`'s namespace, looking at once,
/// then after [`FIRST_POLL_INTERVAL`], doubling the pause up to [`POLL_INTERVAL`]; returns
/// all listening ports at that moment.
///
/// Fails with [`PortsError::NotOpen`] (which ports are missing and what was listening)
/// once `timeout` has passed, and with [`PortsError::Proc`] as soon as the process's
/// tables cannot be read.
pub async fn wait_for_ports(
    pid: i32,
    ports: &[u16],
    timeout: Duration,
) -> Result<BTreeSet<u16>, PortsError> {
    wait_with(|| listening_ports(pid), ports, timeout).await
}

/// [`wait_for_ports`] with the reader injected (for tests with paused time).
pub(crate) async fn wait_with<R>(
    mut read: R,
    ports: &[u16],
    timeout: Duration,
) -> Result<BTreeSet<u16>, PortsError>
where
    R: FnMut() -> Result<BTreeSet<u16>, PortsError>,
{
    let expected: BTreeSet<u16> = ports.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_POLL_INTERVAL;
    loop {
        let listening = read()?;
        let missing: BTreeSet<u16> = expected.difference(&listening).copied().collect();
        if missing.is_empty() {
            return Ok(listening);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PortsError::NotOpen(PortsNotOpen { missing, listening }));
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
        pause = (pause * 2).min(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_that_opens_late_is_waited_for() {
        let start = tokio::time::Instant::now();
        let reader = move || {
            Ok(if start.elapsed() >= Duration::from_millis(350) {
                set(&[8080])
            } else {
                set(&[])
            })
        };
        let open = wait_with(reader, &[8080], Duration::from_secs(5))
            .await
            .expect("opens");
        assert_eq!(open, set(&[8080]));
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "polled promptly"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_that_opens_a_few_ms_late_is_seen_within_a_few_ms() {
        let start = tokio::time::Instant::now();
        let reads = std::cell::Cell::new(0);
        let reader = || {
            reads.set(reads.get() + 1);
            Ok(if start.elapsed() >= Duration::from_millis(12) {
                set(&[8080])
            } else {
                set(&[])
            })
        };
        wait_with(reader, &[8080], Duration::from_secs(5))
            .await
            .expect("opens");
        // Looks at 0, 5, 15 ms: seen at 15, not at the 100 ms steady interval.
        assert_eq!(start.elapsed(), Duration::from_millis(15));
        assert_eq!(reads.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_port_is_looked_at_no_more_often_than_the_steady_interval() {
        let start = tokio::time::Instant::now();
        let reads = std::cell::Cell::new(0);
        let reader = || {
            reads.set(reads.get() + 1);
            Ok(set(&[]))
        };
        let _ = wait_with(reader, &[8080], Duration::from_secs(2)).await;
        // 0, 5, 15, 35, 75, 155, then every 100 ms until 2 s: 6 + 19 looks, and the last at 2 s.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(reads.get(), 25);
    }

    #[tokio::test(start_paused = true)]
    async fn a_port_that_never_opens_times_out_naming_what_did() {
        let start = tokio::time::Instant::now();
        let err = wait_with(|| Ok(set(&[8081])), &[8080], Duration::from_secs(2))
            .await
            .expect_err("times out");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(err.to_string(), "port 8080 never opened; listening on 8081");
    }

    #[test]
    fn the_message_lists_several_missing_ports_and_an_empty_listen_set() {
        let not_open = PortsNotOpen {
            missing: set(&[80, 443]),
            listening: set(&[]),
        };
        assert_eq!(
            not_open.to_string(),
            "ports 80, 443 never opened; listening on nothing"
        );
    }

    #[test]
    fn a_listener_of_this_process_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let pid = i32::try_from(std::process::id()).expect("pid fits");
        assert!(listening_ports(pid).expect("read").contains(&port));
    }

    #[test]
    fn a_missing_process_is_a_proc_error() {
        assert!(matches!(
            listening_ports(i32::MAX),
            Err(PortsError::Proc { .. })
        ));
    }
}
