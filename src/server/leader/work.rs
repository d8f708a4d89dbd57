//! Running work only while leading: a campaign loop that starts the work on election,
//! stops it when the term is lost and campaigns again; and a blob store that checks the
//! term before each deletion (once per batch for batch deletions).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use converge_reconcilers::blobs::{
    BlobDeleted, BlobDeletion, BlobDigest, BlobEntry, BlobStore, ReachError,
};
use converge_reconcilers::engine::BoxError;
use tokio_util::sync::CancellationToken;

use super::{LeaderTerm, Leadership};

/// How long to wait before campaigning again after the work ended on its own.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Campaigns in `leadership` and runs `work(term, until)` for each term won, until `stop`
/// is cancelled. `until` is cancelled when the term is lost or `stop` is cancelled; the work
/// must return soon after. When the term is lost the loop campaigns again (the work starts
/// afresh on the next term); when `stop` is cancelled it resigns and returns; when the
/// work returns by itself while leading, it resigns, pauses a second and campaigns again.
/// Never fails: campaign errors are retried inside [`Leadership::campaign`].
pub async fn run_while_leader<F, Fut>(
    leadership: Arc<dyn Leadership>,
    stop: CancellationToken,
    mut work: F,
) where
    F: FnMut(LeaderTerm, CancellationToken) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    let task = leadership.task().to_string();
    loop {
        let Some(term) = leadership.campaign(&stop).await else {
            return;
        };
        tracing::info!(
            task,
            fencing = term.fencing,
            "leading: starting cluster work"
        );
        let until = stop.child_token();
        let relay = {
            let until = until.clone();
            let lost = term.lost.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = lost.cancelled() => until.cancel(),
                    () = until.cancelled() => {}
                }
            })
        };
        work(term.clone(), until.clone()).await;
        until.cancel();
        let _ = relay.await;
        if stop.is_cancelled() {
            leadership.resign(&term).await;
            return;
        }
        if !term.is_alive() {
            tracing::warn!(
                task,
                fencing = term.fencing,
                "leadership lost: cluster work stopped; campaigning again"
            );
            continue;
        }
        tracing::warn!(
            task,
            fencing = term.fencing,
            "cluster work ended while leading; resigning and campaigning again"
        );
        leadership.resign(&term).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RESTART_PAUSE) => {}
        }
    }
}

/// A [`BlobStore`] whose deletions happen only while a leader term holds: before each
/// `delete_blob` it confirms the term with one read ([`Leadership::check`]) and refuses
/// the deletion (an error the pass reports) when the term is over or cannot be confirmed;
/// before each `delete_blobs` batch it does the same once for the whole batch. Reads pass
/// through unchanged.
pub struct FencedBlobStore {
    inner: Arc<dyn BlobStore>,
    leadership: Arc<dyn Leadership>,
    term: LeaderTerm,
}

impl FencedBlobStore {
    /// Wraps `inner`, fencing its deletions with `term` of `leadership`.
    pub fn new(
        inner: Arc<dyn BlobStore>,
        leadership: Arc<dyn Leadership>,
        term: LeaderTerm,
    ) -> Self {
        Self {
            inner,
            leadership,
            term,
        }
    }
}

#[async_trait]
impl BlobStore for FencedBlobStore {
    async fn list_blob_entries(&self) -> Result<Vec<BlobEntry>, BoxError> {
        self.inner.list_blob_entries().await
    }

    async fn blob_modified(&self, digest: &BlobDigest) -> Result<Option<SystemTime>, BoxError> {
        self.inner.blob_modified(digest).await
    }

    async fn reachable_from(
        &self,
        digest: &BlobDigest,
    ) -> Result<BTreeSet<BlobDigest>, ReachError> {
        self.inner.reachable_from(digest).await
    }

    async fn linked_manifests(&self) -> Result<BTreeSet<BlobDigest>, BoxError> {
        self.inner.linked_manifests().await
    }

    async fn delete_blob(&self, digest: &BlobDigest) -> Result<bool, BoxError> {
        self.leadership.check(&self.term).await?;
        self.inner.delete_blob(digest).await
    }

    /// One term check for the whole batch (the collector sends at most
    /// `converge_reconcilers::blobs::SWEEP_BATCH` blobs), then the inner batch deletion;
    /// when the check fails every entry fails and nothing is deleted.
    async fn delete_blobs(&self, batch: &[BlobDeletion]) -> Vec<Result<BlobDeleted, BoxError>> {
        if let Err(e) = self.leadership.check(&self.term).await {
            return batch
                .iter()
                .map(|_| Err(format!("leader term not confirmed: {e}").into()))
                .collect();
        }
        self.inner.delete_blobs(batch).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::server::leader::LeaderError;

    /// Elected at once with fencing 1, 2, 3, ...; remembers which terms were resigned.
    #[derive(Default)]
    struct CountingLeadership {
        next: AtomicI64,
        resigned: Mutex<Vec<i64>>,
    }

    #[async_trait]
    impl Leadership for CountingLeadership {
        fn task(&self) -> &str {
            "counting"
        }

        async fn campaign(&self, stop: &CancellationToken) -> Option<LeaderTerm> {
            if stop.is_cancelled() {
                return None;
            }
            let fencing = self.next.fetch_add(1, Ordering::SeqCst) + 1;
            Some(LeaderTerm::unfenced("counting", fencing))
        }

        async fn check(&self, term: &LeaderTerm) -> Result<(), LeaderError> {
            term.ensure_alive()
        }

        async fn resign(&self, term: &LeaderTerm) {
            term.lost.cancel();
            self.resigned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(term.fencing);
        }
    }

    fn resigned(l: &CountingLeadership) -> Vec<i64> {
        l.resigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_term_stops_the_work_and_the_next_term_restarts_it() {
        let leadership = Arc::new(CountingLeadership::default());
        let terms: Arc<Mutex<Vec<LeaderTerm>>> = Arc::default();
        let stop = CancellationToken::new();
        let run = tokio::spawn(run_while_leader(leadership.clone(), stop.clone(), {
            let terms = terms.clone();
            move |term, until| {
                terms.lock().expect("lock").push(term);
                async move { until.cancelled().await }
            }
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let first = terms.lock().expect("lock")[0].clone();
        assert_eq!(first.fencing, 1);
        first.lost.cancel();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let fencings: Vec<i64> = terms
            .lock()
            .expect("lock")
            .iter()
            .map(|t| t.fencing)
            .collect();
        assert_eq!(fencings, [1, 2], "work restarted on the next term");
        assert!(
            resigned(&leadership).is_empty(),
            "a lost term is not resigned"
        );
        stop.cancel();
        run.await.expect("loop ends");
        assert_eq!(resigned(&leadership), [2], "stop resigns the live term");
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_by_itself_resigns_and_is_restarted_after_a_pause() {
        let leadership = Arc::new(CountingLeadership::default());
        let starts = Arc::new(AtomicI64::new(0));
        let stop = CancellationToken::new();
        let run = tokio::spawn(run_while_leader(leadership.clone(), stop.clone(), {
            let starts = starts.clone();
            move |_term, _until| {
                starts.fetch_add(1, Ordering::SeqCst);
                async {}
            }
        }));
        tokio::time::sleep(RESTART_PAUSE / 2).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(resigned(&leadership), [1]);
        tokio::time::sleep(RESTART_PAUSE).await;
        assert_eq!(
            starts.load(Ordering::SeqCst),
            2,
            "campaigned again after the pause"
        );
        stop.cancel();
        run.await.expect("loop ends");
    }
}
