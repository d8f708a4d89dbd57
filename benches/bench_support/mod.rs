//! Shared pieces of the end-to-end benches: latency summaries, the one error type, connecting to the entity server (and an in-process one to connect to) and removing containers.
#![allow(dead_code)]

pub mod controller;
pub mod net;
pub mod resources;
pub mod server;

use std::time::{Duration, Instant};

use converge_reconcilers::containerd::ContainerdClient;
use converge_watch::{EntityClient, ServerAddress};

/// Any failure of a bench run; a bench aborts with it and prints it.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// p50, p99 and mean of a set of samples (nearest-rank percentiles).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Summary {
    /// Summarizes `samples` (sorted here); `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).max(1) - 1;
            samples[i.min(samples.len() - 1)]
        };
        let total: Duration = samples.iter().sum();
        Some(Summary {
            count: samples.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            mean: total / samples.len() as u32,
            max: samples[samples.len() - 1],
        })
    }

    /// `n=.. p50=.. p99=.. mean=.. max=..` in milliseconds.
    pub fn line(&self) -> String {
        format!(
            "n={:<6} p50={:>9.3}ms p99={:>9.3}ms mean={:>9.3}ms max={:>9.3}ms",
            self.count,
            ms(self.p50),
            ms(self.p99),
            ms(self.mean),
            ms(self.max)
        )
    }
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints `label: summary` or `label: no samples`.
pub fn report(label: &str, samples: &mut [Duration]) -> Option<Summary> {
    let summary = Summary::of(samples);
    match &summary {
        Some(s) => println!("{label:<40} {}", s.line()),
        None => println!("{label:<40} no samples"),
    }
    summary
}

/// Connects to the entity server at `address`, waiting up to 10 s for it to listen.
pub async fn connect(address: &ServerAddress) -> Result<EntityClient, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match EntityClient::connect(address).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Removes container `cid` (SIGTERM, `grace`, SIGKILL, task, record, snapshot), retrying up
/// to 5 times 200 ms apart: right after a kill the shim may close its connection under
/// containerd ("ttrpc: closed"), which a second attempt gets past. Each retry is printed on
/// stderr; the last error is returned.
pub async fn remove_container(
    containerd: &ContainerdClient,
    cid: &str,
    grace: Duration,
) -> Result<(), BenchError> {
    let mut attempt = 0;
    loop {
        match containerd.remove_container(cid, grace).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= 5 => return Err(e.into()),
            Err(e) => {
                eprintln!("removing {cid} (attempt {attempt}): {e}; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
