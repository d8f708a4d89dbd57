//! Bench: the three GC passes at scale (blobs: 10,000 blobs / 1,000 artifacts; images: 500 images; orphans: 1,000 containers), plan (dry-run) and real sweep timed separately with peak RSS, beside the unavoidable listing measured in the same run.

mod bench_support;
mod gc_sections;

use std::future::Future;
use std::time::{Duration, Instant};

use bench_support::resources::{mib, reset_peak, usage};
pub use bench_support::server::BenchServer;
use bench_support::{BenchError, Summary, ms, report};
use converge_reconcilers::gc_report::GcPassReport;

/// Timed repetitions of each listing baseline and each dry-run plan.
pub const REPEATS: usize = 5;

fn main() -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), BenchError> {
    // `BENCH_GC=blobs,images` runs only those sections.
    let only = std::env::var("BENCH_GC").ok();
    let wanted = |s: &str| only.as_ref().is_none_or(|o| o.split(',').any(|x| x == s));
    println!(
        "gc: each section on its own in-process entity server (redb, temp dir); plan = one \
         dry-run pass ({REPEATS} times), sweep = one real pass; peak RSS = this process's \
         VmHWM (reset before each step) minus its RSS before the step"
    );
    if wanted("blobs") {
        gc_sections::blobs::run().await?;
    }
    if wanted("images") {
        gc_sections::images::run().await?;
    }
    if wanted("orphans") {
        gc_sections::orphans::run().await?;
    }
    Ok(())
}

/// One measured step: how long, and how far this process's peak RSS rose above its RSS
/// before the step.
pub struct Measured<T> {
    /// The step's result.
    pub value: T,
    /// Wall time.
    pub took: Duration,
    /// Peak RSS during the step minus RSS before it, bytes.
    pub peak_delta: u64,
}

/// Runs `step` once, timed, with the peak RSS reset before it.
pub async fn measure<T, F>(step: F) -> Result<Measured<T>, BenchError>
where
    F: Future<Output = Result<T, BenchError>>,
{
    let before = usage(None)?;
    reset_peak()?;
    let started = Instant::now();
    let value = step.await?;
    let took = started.elapsed();
    let after = usage(None)?;
    Ok(Measured {
        value,
        took,
        peak_delta: after.peak_rss.saturating_sub(before.rss),
    })
}

/// Runs `step` [`REPEATS`] times; prints the timing summary under `label` with the largest
/// peak RSS rise; returns the summary and the last value.
pub async fn measure_repeated<T, F, Fut>(
    label: &str,
    mut step: F,
) -> Result<(Summary, T), BenchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BenchError>>,
{
    let mut samples = Vec::with_capacity(REPEATS);
    let mut peak = 0;
    let mut last = None;
    for _ in 0..REPEATS {
        let m = measure(step()).await?;
        samples.push(m.took);
        peak = peak.max(m.peak_delta);
        last = Some(m.value);
    }
    let summary = report(label, &mut samples).ok_or("no samples")?;
    println!("{:<40} peak RSS +{:.1} MiB", "", mib(peak));
    let last = last.ok_or("no samples")?;
    Ok((summary, last))
}

/// One line about a GC report: planned/deleted count, bytes, kept, problems.
pub fn describe(report: &GcPassReport) -> String {
    let bytes: u64 = report.plan.actions().iter().filter_map(|a| a.bytes).sum();
    format!(
        "{} actions ({} deleted), {:.1} MiB, {} kept, {} problems",
        report.plan.actions().len(),
        report.summary.deleted,
        mib(bytes),
        report.kept.len(),
        report.problems.len()
    )
}

/// Prints the real sweep's line and the plan/baseline ratio.
pub fn print_sweep(sweep: &Measured<GcPassReport>, plan: &Summary, baseline: &Summary) {
    println!(
        "{:<40} took {:>9.3}ms, peak RSS +{:.1} MiB: {}",
        "sweep (one real pass)",
        ms(sweep.took),
        mib(sweep.peak_delta),
        describe(&sweep.value)
    );
    println!(
        "plan p50 / listing baseline p50: {:.2}x (+{:.1}ms)",
        ms(plan.p50) / ms(baseline.p50),
        ms(plan.p50) - ms(baseline.p50)
    );
}
