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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sandbox(name: &str, node: &str, revision: i64) -> Entity {
        let id = format!("sandbox/{name}").parse().expect("id");
        let mut e = Entity::new(id, json!({"node": node, "containers": []}));
        e.revision = revision;
        e
    }

    fn moved(name: &str, from: &str, to: &str, revision: i64) -> StoreEvent {
        StoreEvent::Put {
            entity: sandbox(name, to, revision),
            prev: Some(sandbox(name, from, revision - 1)),
        }
    }

    fn kind_of(event: &WatchEvent) -> Option<Type> {
        Type::try_from(event.r#type).ok()
    }

    #[test]
    fn a_sandbox_moving_off_the_node_is_a_delete_and_onto_it_a_put() {
        let filter = Filter::parse("sandbox", "node-a", false).expect("filter");
        let off = filter
            .translate(&moved("web", "node-a", "node-b", 5))
            .expect("event");
        assert_eq!((kind_of(&off), off.revision), (Some(Type::Delete), 5));
        let on = filter
            .translate(&moved("web", "node-b", "node-a", 6))
            .expect("event");
        assert_eq!(kind_of(&on), Some(Type::Put));
        assert!(
            filter
                .translate(&moved("web", "node-b", "node-c", 7))
                .is_none()
        );
        assert!(filter.translate(&moved("web", "node-b", "", 8)).is_none());
        let unassigned = Filter::parse("sandbox", "node-a", true).expect("filter");
        let adopted = unassigned
            .translate(&moved("web", "node-b", "", 8))
            .expect("event");
        assert_eq!(kind_of(&adopted), Some(Type::Put));
    }

    #[test]
    fn bad_filters_are_refused() {
        assert!(Filter::parse("pod", "", false).is_err());
        assert!(Filter::parse("", "Node_A", false).is_err());
        assert!(Filter::parse("", "", true).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_watch_reports_progress_at_the_last_revision_it_passed() {
        let (feed, events) = mpsc::channel(8);
        let (tx, mut rx) = mpsc::channel(8);
        let relay = Relay {
            filter: Filter::parse("sandbox", "node-a", false).expect("filter"),
            tx,
            last_seen: 3,
            progress_interval: Duration::from_secs(5),
            shutdown: CancellationToken::new(),
        };
        let task = tokio::spawn(relay.run(ReceiverStream::new(events).boxed()));

        // A change on another node is filtered out but still moves the cursor.
        feed.send(Ok(moved("other", "node-b", "node-c", 9)))
            .await
            .expect("send");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(rx.try_recv().is_err(), "nothing before the interval");
        tokio::time::advance(Duration::from_secs(2)).await;
        let progress = rx.recv().await.expect("event").expect("ok");
        assert_eq!(
            (kind_of(&progress), progress.revision),
            (Some(Type::Progress), 9)
        );

        feed.send(Ok(moved("web", "node-b", "node-a", 10)))
            .await
            .expect("send");
        let put = rx.recv().await.expect("event").expect("ok");
        assert_eq!((kind_of(&put), put.revision), (Some(Type::Put), 10));
        drop(feed);
        assert!(
            rx.recv().await.is_none(),
            "the answer ends with the store stream"
        );
        task.await.expect("relay");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_watch_with_nothing_to_send() {
        let (_feed, events) = mpsc::channel::<Result<StoreEvent, StoreError>>(1);
        let (tx, mut rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let relay = Relay {
            filter: Filter::parse("", "", false).expect("filter"),
            tx,
            last_seen: 0,
            progress_interval: Duration::from_secs(5),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(relay.run(ReceiverStream::new(events).boxed()));
        shutdown.cancel();
        task.await.expect("relay");
        assert!(rx.recv().await.is_none());
    }
}
