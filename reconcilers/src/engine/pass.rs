//! One level-triggered pass: reconcile a set of keys once each, without retries (what
//! `converge reconcile --dry-run` runs).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::plan::Executor;
use super::reconciler::{Action, Context, Reconciler};

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport<K> {
    /// Keys reconciled without error.
    pub succeeded: Vec<K>,
    /// Keys whose reconcile failed or panicked, with why.
    pub failed: Vec<(K, String)>,
}

/// Reconciles every key once with up to `workers` at a time through `executor`. Errors and
/// panics are collected in the report, never propagated; nothing is retried.
pub async fn run_pass<R: Reconciler>(
    reconciler: Arc<R>,
    keys: Vec<R::Key>,
    workers: usize,
    executor: Executor,
) -> PassReport<R::Key> {
    let ctx = Context {
        executor,
        cancel: CancellationToken::new(),
    };
    let results: Vec<(R::Key, Result<Action, String>)> = futures::stream::iter(keys)
        .map(|key| {
            let reconciler = reconciler.clone();
            let ctx = ctx.clone();
            async move {
                let span =
                    tracing::info_span!("reconcile", controller = reconciler.name(), key = %key);
                let _entered = span.enter();
                let out = AssertUnwindSafe(reconciler.reconcile(&key, &ctx))
                    .catch_unwind()
                    .await;
                let out = match out {
                    Ok(Ok(action)) => Ok(action),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("reconciler panicked".to_string()),
                };
                (key, out)
            }
        })
        .buffered(workers.max(1))
        .collect()
        .await;
    let mut report = PassReport {
        succeeded: Vec::new(),
        failed: Vec::new(),
    };
    for (key, out) in results {
        match out {
            Ok(_) => report.succeeded.push(key),
            Err(e) => report.failed.push((key, e)),
        }
    }
    report
}
