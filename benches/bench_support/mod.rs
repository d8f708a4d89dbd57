//! Shared pieces of the end-to-end benches: latency summaries and the one error type.
#![allow(dead_code)]

pub mod controller;
pub mod net;
pub mod resources;

use std::time::Duration;

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
