//! Watch feeds of `RedbStore`: replay history from a revision, then follow live changes
//! with no gap and no duplicate, re-reading history whenever the live feed fell behind.

use std::sync::Arc;

use ::redb::ReadableDatabase;
use converge_watch::Kind;
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{Shared, blocking, tables, unavailable};
use crate::server::store::{EventStream, StoreError, StoreEvent};

/// Events buffered between a feed task and its consumer.
const FEED_BUFFER: usize = 256;

/// Starts a watch of `kind` (or all kinds) from `from_revision` (0: from now on).
/// Fails with `Compacted` right away if that revision's history is gone.
pub(super) async fn watch(
    shared: &Arc<Shared>,
    kind: Option<Kind>,
    from_revision: i64,
) -> Result<EventStream, StoreError> {
    // Subscribe before reading anything, so nothing committed from now on can be missed.
    let live = shared.subscribe()?;
    let (current, compacted) = blocking(shared, |s| s.revisions()).await?;
    let next = if from_revision <= 0 {
        current + 1
    } else {
        from_revision
    };
    if next <= compacted {
        return Err(StoreError::Compacted {
            requested: next,
            compact_revision: compacted + 1,
        });
    }
    let (tx, rx) = mpsc::channel(FEED_BUFFER);
    let feed = Feed {
        shared: Arc::clone(shared),
        kind,
        next,
        tx,
    };
    tokio::spawn(feed.run(live));
    Ok(ReceiverStream::new(rx).boxed())
}

/// One watcher's position and outlet.
struct Feed {
    shared: Arc<Shared>,
    kind: Option<Kind>,
    /// The next revision to deliver.
    next: i64,
    tx: mpsc::Sender<Result<StoreEvent, StoreError>>,
}

/// Whether the feed goes on.
enum Flow {
    Continue,
    Stop,
}

impl Feed {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<StoreEvent>>) {
        if let Flow::Stop = self.replay().await {
            return;
        }
        loop {
            let received = tokio::select! {
                () = self.tx.closed() => return,
                received = live.recv() => received,
            };
            let flow = match received {
                Ok(event) if event.revision() < self.next => Flow::Continue,
                Ok(event) if event.revision() == self.next => self.deliver((*event).clone()).await,
                // A revision was skipped (cannot happen unless events were dropped): re-read.
                Ok(_) => self.replay().await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        next = self.next,
                        "watch fell behind; replaying history"
                    );
                    self.replay().await
                }
                Err(broadcast::error::RecvError::Closed) => Flow::Stop,
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// Delivers history from `next` up to the revision current when read. On `Compacted`
    /// or a failed read, sends the error and stops.
    async fn replay(&mut self) -> Flow {
        loop {
            let from = self.next;
            let chunk = blocking(&self.shared, move |s| {
                s.with_db(|db| {
                    let txn = db
                        .begin_read()
                        .map_err(|e| unavailable("cannot begin a read", e))?;
                    tables::read_history(&txn, from)
                })
            })
            .await;
            let events = match chunk {
                Ok(events) => events,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return Flow::Stop;
                }
            };
            let full = events.len() == tables::REPLAY_CHUNK;
            for event in events {
                if let Flow::Stop = self.deliver(event).await {
                    return Flow::Stop;
                }
            }
            if !full {
                return Flow::Continue;
            }
        }
    }

    /// Sends one event if it matches the kind, and advances the cursor past it.
    async fn deliver(&mut self, event: StoreEvent) -> Flow {
        self.next = event.revision() + 1;
        let kind = match &event {
            StoreEvent::Put { entity, .. } => entity.kind,
            StoreEvent::Delete { prev, .. } => prev.kind,
        };
        if self.kind.is_some_and(|k| k != kind) {
            return Flow::Continue;
        }
        match self.tx.send(Ok(event)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}
