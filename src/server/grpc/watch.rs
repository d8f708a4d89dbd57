//! The `Watch` call: turns store events into wire events through a kind/node filter,
//! sends `PROGRESS` when idle, and ends on shutdown, on `COMPACTED` or when the client leaves.

use std::sync::Arc;
use std::time::Duration;

use converge_watch::proto::WatchEvent;
use converge_watch::proto::watch_event::Type;
use converge_watch::{Entity, Kind};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::status_from_store;
use crate::server::store::{EventStream, Store, StoreError, StoreEvent};

/// Wire events buffered per watch before the feed waits for the client.
const WATCH_BUFFER: usize = 128;

/// Which entities a list or watch concerns: a kind (or all), and for sandboxes a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    kind: Option<Kind>,
    node: String,
    include_unassigned: bool,
}

impl Filter {
    /// Parses the request fields; an unknown kind or a bad node name is `INVALID_ARGUMENT`.
    pub(crate) fn parse(kind: &str, node: &str, include_unassigned: bool) -> Result<Self, Status> {
        let kind = if kind.is_empty() {
            None
        } else {
            Some(
                kind.parse::<Kind>()
                    .map_err(|e| Status::invalid_argument(format!("kind: {e}")))?,
            )
        };
        if !node.is_empty() && !converge_watch::entity::is_valid_name(node) {
            return Err(Status::invalid_argument(format!(
                "node: {node:?} is not a DNS label"
            )));
        }
        Ok(Self {
            kind,
            node: node.to_string(),
            include_unassigned,
        })
    }

    /// The kind to ask the store for.
    pub(crate) fn kind(&self) -> Option<Kind> {
        self.kind
    }

    /// True when `entity` is of the kind and, for a sandbox, on the node (or unassigned
    /// when those are included). Other kinds are never filtered by node.
    pub(crate) fn matches(&self, entity: &Entity) -> bool {
        if self.kind.is_some_and(|k| k != entity.kind) {
            return false;
        }
        if self.node.is_empty() || entity.kind != Kind::Sandbox {
            return true;
        }
        let node = entity.node();
        node == self.node || (self.include_unassigned && node.is_empty())
    }

    /// What this watcher sees of a store event: a sandbox moving onto its node is a PUT,
    /// moving off it a DELETE (carrying the new state), and unrelated changes nothing.
    pub(crate) fn translate(&self, event: &StoreEvent) -> Option<WatchEvent> {
        match event {
            StoreEvent::Put { entity, prev } => {
                if self.matches(entity) {
                    Some(wire(Type::Put, entity, entity.revision))
                } else if prev.as_ref().is_some_and(|p| self.matches(p)) {
                    Some(wire(Type::Delete, entity, entity.revision))
                } else {
                    None
                }
            }
            StoreEvent::Delete { prev, revision } => self
                .matches(prev)
                .then(|| wire(Type::Delete, prev, *revision)),
        }
    }
}

fn wire(kind: Type, entity: &Entity, revision: i64) -> WatchEvent {
    WatchEvent {
        r#type: kind as i32,
        entity: Some(entity.to_proto()),
        revision,
        compact_revision: 0,
    }
}

fn compacted(compact_revision: i64, revision: i64) -> WatchEvent {
    WatchEvent {
        r#type: Type::Compacted as i32,
        entity: None,
        revision,
        compact_revision,
    }
}

fn progress(revision: i64) -> WatchEvent {
    WatchEvent {
        r#type: Type::Progress as i32,
        entity: None,
        revision,
        compact_revision: 0,
    }
}

/// Opens the store watch and spawns the task feeding the answer stream. A compacted
/// `from_revision` answers a stream holding one `COMPACTED` event.
pub(crate) async fn start(
    store: Arc<dyn Store>,
    filter: Filter,
    from_revision: i64,
    progress_interval: Duration,
    shutdown: CancellationToken,
) -> Result<ReceiverStream<Result<WatchEvent, Status>>, Status> {
    if from_revision < 0 {
        return Err(Status::invalid_argument(format!(
            "from_revision: {from_revision} is negative"
        )));
    }
    let start = if from_revision == 0 {
        store.revision().await.map_err(status_from_store)? + 1
    } else {
        from_revision
    };
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    // Every kind is watched so the cursor advances past other kinds' changes too, which
    // keeps PROGRESS revisions exact.
    match store.watch(None, start).await {
        Ok(events) => {
            let relay = Relay {
                filter,
                tx,
                last_seen: start - 1,
                progress_interval,
                shutdown,
            };
            tokio::spawn(relay.run(events));
        }
        Err(StoreError::Compacted {
            compact_revision, ..
        }) => {
            let current = store.revision().await.unwrap_or(0);
            // The channel is fresh and has room; if the client already left, nobody cares.
            let _ = tx.try_send(Ok(compacted(compact_revision, current)));
        }
        Err(e) => return Err(status_from_store(e)),
    }
    Ok(ReceiverStream::new(rx))
}

/// Moves events from the store to one client.
struct Relay {
    filter: Filter,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
    /// Every change up to this revision has been delivered or filtered out.
    last_seen: i64,
    progress_interval: Duration,
    shutdown: CancellationToken,
}

impl Relay {
    async fn run(mut self, mut events: EventStream) {
        let idle = tokio::time::sleep(self.progress_interval);
        tokio::pin!(idle);
        loop {
            let out = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                () = self.tx.closed() => return,
                item = events.next() => match item {
                    None => return,
                    Some(Ok(event)) => {
                        self.last_seen = self.last_seen.max(event.revision());
                        match self.filter.translate(&event) {
                            Some(wire) => Ok(wire),
                            None => continue,
                        }
                    }
                    Some(Err(StoreError::Compacted { compact_revision, .. })) => {
                        let _ = self.tx.send(Ok(compacted(compact_revision, self.last_seen))).await;
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = self.tx.send(Err(status_from_store(e))).await;
                        return;
                    }
                },
                () = &mut idle => Ok(progress(self.last_seen)),
            };
            let sent = tokio::select! {
                () = self.shutdown.cancelled() => return,
                sent = self.tx.send(out) => sent,
            };
            if sent.is_err() {
                return;
            }
            idle.as_mut()
                .reset(tokio::time::Instant::now() + self.progress_interval);
        }
    }
}
