//! The contract every [`Store`] must keep, as checks generic over the store, so the redb
//! store and any later one (etcd) run the very same tests. Each check wants a store with
//! nothing else writing to it, uses unique entity names, and reports the first violation.
//!
//! The checks are grouped by topic: `revisions` (revisions and conflicts), `watch`,
//! `deletes` (deletes and fences) and `compaction` (history and reopening).

mod compaction;
mod deletes;
mod revisions;
mod watch;

pub use compaction::{
    compaction_answers_compacted, compaction_answers_compacted_when, reopen_keeps_data_and_revision,
};
pub use deletes::{an_unfenced_delete_fenced_is_a_delete, watches_see_deletes};
pub use revisions::{
    a_failing_op_leaves_the_batch_unapplied, create_only_conflicts_when_it_exists,
    patch_status_needs_the_current_revision, putting_the_same_spec_is_a_no_op, revisions_increase,
    stale_update_conflicts,
};
pub use watch::{slow_watcher_loses_nothing, watch_replays_history_then_streams_live};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use converge_watch::{Entity, EntityId, Kind};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{EventStream, PutOp, Store, StoreError, StoreEvent};

/// How long a check waits for a watch event before calling it missing.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A broken promise of the store contract.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The store answered, but wrongly.
    #[error("{check}: {message}")]
    Violation {
        /// The check that failed.
        check: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A store call that should have succeeded failed.
    #[error("{check}: {call} failed")]
    Store {
        /// The check that failed.
        check: &'static str,
        /// The call.
        call: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

type Outcome = Result<(), ConformanceError>;

/// Context of one check, used to build its errors.
struct Check(&'static str);

impl Check {
    fn ensure(&self, ok: bool, message: impl FnOnce() -> String) -> Outcome {
        if ok {
            Ok(())
        } else {
            Err(self.fail(message()))
        }
    }

    fn fail(&self, message: String) -> ConformanceError {
        ConformanceError::Violation {
            check: self.0,
            message,
        }
    }

    fn call<T>(&self, call: &'static str, r: Result<T, StoreError>) -> Result<T, ConformanceError> {
        r.map_err(|source| ConformanceError::Store {
            check: self.0,
            call,
            source,
        })
    }

    /// Expects a conflict with the given expected and current revisions.
    fn conflict<T: std::fmt::Debug>(
        &self,
        r: Result<T, StoreError>,
        expected: i64,
        current: i64,
    ) -> Outcome {
        match r {
            Err(StoreError::Conflict {
                expected: e,
                current: c,
                ..
            }) if e == expected && c == current => Ok(()),
            other => Err(self.fail(format!(
                "wanted Conflict(expected {expected}, current {current}), got {other:?}"
            ))),
        }
    }

    /// Expects `NotFound` from `what` (such as "deleting a missing entity").
    fn not_found<T: std::fmt::Debug>(&self, what: &str, r: Result<T, StoreError>) -> Outcome {
        match r {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => Err(self.fail(format!("{what}: wanted NotFound, got {other:?}"))),
        }
    }

    async fn next(&self, events: &mut EventStream) -> Result<StoreEvent, ConformanceError> {
        match tokio::time::timeout(EVENT_TIMEOUT, events.next()).await {
            Ok(Some(Ok(event))) => Ok(event),
            Ok(Some(Err(e))) => Err(self.fail(format!("watch failed: {e}"))),
            Ok(None) => Err(self.fail("watch ended early".into())),
            Err(_) => Err(self.fail("no watch event within 10 s".into())),
        }
    }

    /// `store.patch_status`, expected to succeed; returns the patched entity.
    async fn patch_status(
        &self,
        store: &dyn Store,
        id: &EntityId,
        status: Value,
        expected: i64,
    ) -> Result<Entity, ConformanceError> {
        self.call(
            "patch_status",
            store.patch_status(id, status, expected).await,
        )
    }

    async fn put(
        &self,
        store: &dyn Store,
        id: &EntityId,
        spec: Value,
        expected: Option<i64>,
    ) -> Result<i64, ConformanceError> {
        let out = self.call("put", store.put(vec![op(id, spec, expected)]).await)?;
        out.first()
            .map(|e| e.revision)
            .ok_or_else(|| self.fail("put returned no entity".into()))
    }
}

/// An id of `kind` no other check (or earlier run) uses.
fn unique(kind: Kind, label: &str) -> Result<EntityId, ConformanceError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{label}-{}-{n}", std::process::id());
    EntityId::new(kind, name).map_err(|e| ConformanceError::Violation {
        check: "unique id",
        message: e.to_string(),
    })
}

/// A put of `spec` to `id`, expecting `expected` (`None`: any revision).
fn op(id: &EntityId, spec: Value, expected: Option<i64>) -> PutOp {
    PutOp {
        id: id.clone(),
        spec,
        expected_revision: expected,
    }
}

/// A sandbox spec that differs for each `version`.
fn spec(version: u32) -> Value {
    json!({"containers": [{"name": "app", "image": format!("busybox:{version}")}]})
}
