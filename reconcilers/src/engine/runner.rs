//! The runner: N workers taking keys from the queue and calling the reconciler, with panic
//! recovery, optional timeouts, metrics and graceful shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::metrics::{ControllerMetrics, ReconcileOutcome};
use super::plan::Executor;
use super::queue::WorkQueue;
use super::reconciler::{Action, Context, ReconcileError, Reconciler};
use super::shutdown::Shutdown;

/// Tuning of a [`Runner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Concurrent reconciles (default 4). Zero is treated as one.
    pub workers: usize,
    /// A reconcile running longer than this is abandoned and retried with backoff
    /// (default none).
    pub timeout: Option<Duration>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            timeout: None,
        }
    }
}

/// Drives one reconciler from one queue.
pub struct Runner<R: Reconciler> {
    reconciler: Arc<R>,
    queue: Arc<WorkQueue<R::Key>>,
    config: RunnerConfig,
    executor: Executor,
    metrics: Option<ControllerMetrics>,
}

impl<R: Reconciler> std::fmt::Debug for Runner<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("controller", &self.reconciler.name())
            .field("config", &self.config)
            .finish()
    }
}

enum Outcome {
    Finished(Result<Action, ReconcileError>),
    Panicked(String),
    TimedOut(Duration),
}

impl<R: Reconciler> Runner<R> {
    /// A runner for `reconciler` over `queue`, mutating through `executor`.
    pub fn new(
        reconciler: Arc<R>,
        queue: Arc<WorkQueue<R::Key>>,
        config: RunnerConfig,
        executor: Executor,
    ) -> Self {
        Self {
            reconciler,
            queue,
            config,
            executor,
            metrics: None,
        }
    }

    /// Records `controller_runtime_*` metrics into `metrics`.
    pub fn with_metrics(mut self, metrics: ControllerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until `shutdown` is requested (or the queue shuts down and drains). On the first
    /// request the queue is shut down, workers stop taking keys and in-flight reconciles
    /// finish; on a forced shutdown in-flight reconciles are dropped. Never panics because a
    /// reconciler did.
    pub async fn run(self, shutdown: Shutdown) {
        let mut workers = JoinSet::new();
        let this = Arc::new(self);
        for worker in 0..this.config.workers.max(1) {
            let this = this.clone();
            let shutdown = shutdown.clone();
            workers.spawn(async move { this.work(worker, shutdown).await });
        }
        let gauge = this.metrics.clone().map(|m| {
            let queue = this.queue.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    m.set_unfinished(queue.unfinished_work().as_secs_f64());
                }
            })
        });
        let queue = this.queue.clone();
        let stopper = shutdown.clone();
        let stop = tokio::spawn(async move {
            stopper.requested().await;
            queue.shutdown();
        });
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined {
                tracing::error!(controller = this.reconciler.name(), error = %e, "worker task failed");
            }
        }
        stop.abort();
        if let Some(g) = gauge {
            g.abort();
        }
    }

    async fn work(&self, worker: usize, shutdown: Shutdown) {
        let ctx = Context {
            executor: self.executor.clone(),
            cancel: shutdown.force_token().clone(),
        };
        loop {
            let key = tokio::select! {
                biased;
                _ = shutdown.requested() => None,
                key = self.queue.get() => key,
            };
            let Some(key) = key else { break };
            let span = tracing::info_span!("reconcile", controller = self.reconciler.name(), key = %key, worker);
            let finished = tokio::select! {
                biased;
                _ = shutdown.forced() => false,
                () = self.process(&key, &ctx).instrument(span) => true,
            };
            if !finished {
                self.queue.done(&key);
                break;
            }
        }
    }

    async fn process(&self, key: &R::Key, ctx: &Context) {
        if let Some(m) = &self.metrics {
            m.worker_started();
        }
        let start = Instant::now();
        let call = AssertUnwindSafe(self.reconciler.reconcile(key, ctx)).catch_unwind();
        let outcome = match self.config.timeout {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(Ok(r)) => Outcome::Finished(r),
                Ok(Err(panic)) => Outcome::Panicked(panic_message(panic.as_ref())),
                Err(_) => Outcome::TimedOut(limit),
            },
            None => match call.await {
                Ok(r) => Outcome::Finished(r),
                Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
            },
        };
        let elapsed = start.elapsed().as_secs_f64();
        let recorded = match outcome {
            Outcome::Finished(Ok(Action::Done)) => {
                self.queue.done_and_forget(key);
                ReconcileOutcome::Success
            }
            Outcome::Finished(Ok(Action::RequeueAfter(after))) => {
                self.queue.forget(key);
                self.requeue(key, |q| q.requeue_after(key.clone(), after).map(|()| after));
                ReconcileOutcome::RequeueAfter
            }
            Outcome::Finished(Err(e)) if e.is_terminal() => {
                tracing::warn!(error = %DisplayChain(&e), "reconcile failed terminally; not retrying");
                self.queue.done_and_forget(key);
                ReconcileOutcome::Error
            }
            Outcome::Finished(Err(e)) => {
                tracing::warn!(error = %DisplayChain(&e), "reconcile failed; retrying with backoff");
                self.requeue(key, |q| q.add_rate_limited(key.clone()));
                ReconcileOutcome::Error
            }
            Outcome::Panicked(message) => {
                tracing::error!(panic = %message, "reconciler panicked; retrying with backoff");
                self.requeue(key, |q| q.add_rate_limited(key.clone()));
                ReconcileOutcome::Panic
            }
            Outcome::TimedOut(limit) => {
                tracing::warn!(timeout = ?limit, "reconcile timed out; retrying with backoff");
                self.requeue(key, |q| q.add_rate_limited(key.clone()));
                ReconcileOutcome::Error
            }
        };
        if let Some(m) = &self.metrics {
            m.reconciled(recorded, elapsed);
            m.worker_finished();
        }
    }

    fn requeue<E: std::fmt::Display>(
        &self,
        key: &R::Key,
        schedule: impl FnOnce(&WorkQueue<R::Key>) -> Result<Duration, E>,
    ) {
        match schedule(&self.queue) {
            Ok(after) => tracing::debug!(after = ?after, "requeued"),
            Err(e) => tracing::debug!(error = %e, "not requeued"),
        }
        self.queue.done(key);
    }
}

/// Prints an error with its `source` chain, `a: b: c`.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
