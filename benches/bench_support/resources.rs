//! CPU time and memory of a process from `/proc` (procfs): what the fleet and GC benches report beside their timings.

use std::time::Duration;

use procfs::process::Process;

use super::BenchError;

/// CPU time (user + system) and memory of one process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User + system CPU time so far (all threads).
    pub cpu: Duration,
    /// Resident set now, bytes.
    pub rss: u64,
    /// Peak resident set since start (or since [`reset_peak`]), bytes.
    pub peak_rss: u64,
}

/// The usage of process `pid` (`None`: this process). Fails when `/proc` cannot be read.
pub fn usage(pid: Option<i32>) -> Result<Usage, BenchError> {
    let process = match pid {
        Some(pid) => Process::new(pid)?,
        None => Process::myself()?,
    };
    let stat = process.stat()?;
    let status = process.status()?;
    let ticks = procfs::ticks_per_second().max(1);
    let cpu_ticks = stat.utime + stat.stime;
    Ok(Usage {
        cpu: Duration::from_micros(cpu_ticks * 1_000_000 / ticks),
        rss: status.vmrss.unwrap_or(0) * 1024,
        peak_rss: status.vmhwm.unwrap_or(0) * 1024,
    })
}

/// Resets this process's peak RSS to its current RSS (`echo 5 > /proc/self/clear_refs`), so
/// the next [`usage`] reports the peak of what follows. Fails where the kernel refuses.
pub fn reset_peak() -> Result<(), BenchError> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(())
}

/// Mebibytes, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
