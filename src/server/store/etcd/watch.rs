//! Watches of the etcd store: an etcd watch with `prev_kv` on the kind's prefix, mapped to
//! `StoreEvent`s, and resumed from the last delivered event when its connection breaks.

use std::time::{Duration, Instant};

use converge_watch::{Backoff, BackoffConfig, Entity, Jitter, Kind};
use etcd_client::{Event, EventType, WatchOptions, WatchStream};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Conn, MAX_RESPONSE_BYTES, codec, unavailable};
use crate::server::store::{EventStream, StoreError, StoreEvent};

/// Events buffered between the etcd watch and a slow reader; beyond that the task stops
/// reading and etcd keeps the rest (replaying it from history if it must).
const BUFFER: usize = 64;

/// How long a broken watch keeps trying to resume before it reports `Unavailable`.
const RESUME_DEADLINE: Duration = Duration::from_secs(60);

/// Where a watch stands: the etcd watch reopens at `revision`, skipping the `delivered`
/// events of that revision it already passed on (one revision may hold a whole batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    revision: i64,
    delivered: usize,
}

/// What a reopened etcd watch must drop: the events the previous one already delivered.
#[derive(Debug, Clone, Copy)]
struct Replay {
    revision: i64,
    remaining: usize,
}

impl Replay {
    /// True when an event of `revision` is new; false for one delivered before the reopen.
    fn is_new(&mut self, revision: i64) -> bool {
        if revision < self.revision {
            return false;
        }
        if revision == self.revision && self.remaining > 0 {
            self.remaining -= 1;
            return false;
        }
        true
    }
}

impl Cursor {
    /// What a watch reopened at this cursor must drop.
    fn replay(&self) -> Replay {
        Replay {
            revision: self.revision,
            remaining: self.delivered,
        }
    }

    /// Records that an event of `revision` was passed on.
    fn advance(&mut self, revision: i64) {
        if revision == self.revision {
            self.delivered += 1;
        } else {
            self.revision = revision;
            self.delivered = 1;
        }
    }
}

/// Starts a watch of `kind` (or every kind) from `from_revision` (0 = the revision after
/// the current one). The stream yields every change in revision order, resuming the etcd
/// watch internally after a broken connection; it yields `Compacted` (and ends) when etcd
/// no longer has the history needed, `Unavailable` (and ends) when etcd stays unreachable
/// for a minute, and ends when the store is closed.
pub(super) async fn watch(
    conn: &Conn,
    kind: Option<Kind>,
    from_revision: i64,
) -> Result<EventStream, StoreError> {
    conn.ensure_open()?;
    let start = if from_revision > 0 {
        from_revision
    } else {
        conn.revision().await? + 1
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    let feed = Feed {
        conn: conn.clone(),
        prefix: conn.keys.range(kind),
        tx,
    };
    tokio::spawn(feed.run(Cursor {
        revision: start,
        delivered: 0,
    }));
    Ok(ReceiverStream::new(rx).boxed())
}

/// The task behind one watch stream.
struct Feed {
    conn: Conn,
    prefix: String,
    tx: mpsc::Sender<Result<StoreEvent, StoreError>>,
}

/// Why one etcd watch stopped.
enum Stop {
    /// The reader, or the store, is gone: end quietly.
    Done,
    /// The connection broke or etcd canceled the watch: resume.
    Broken(String),
}

impl Feed {
    async fn run(self, mut cursor: Cursor) {
        let mut backoff = Backoff::new(BackoffConfig {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: Jitter::Equal,
            reset_after: Duration::from_secs(10),
        });
        let mut failing_since: Option<Instant> = None;
        loop {
            let reason = match self.open(cursor.revision).await {
                Ok(stream) => {
                    failing_since = None;
                    backoff.reset();
                    match self.pump(stream, &mut cursor).await {
                        Stop::Done => return,
                        Stop::Broken(reason) => reason,
                    }
                }
                Err(e) => e.to_string(),
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= RESUME_DEADLINE {
                let message =
                    format!("etcd watch could not resume for {RESUME_DEADLINE:?}: {reason}");
                self.send(Err(StoreError::Unavailable {
                    message,
                    source: None,
                }))
                .await;
                return;
            }
            let delay = backoff.next_delay();
            tracing::warn!(prefix = %self.prefix, revision = cursor.revision, %reason, ?delay, "etcd watch broke; resuming");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.conn.closed.cancelled() => return,
                _ = self.tx.closed() => return,
            }
        }
    }

    async fn open(&self, revision: i64) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(revision);
        self.conn
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .watch(self.prefix.as_str(), Some(options))
            .await
            .map_err(|e| unavailable(format!("cannot watch {} from {revision}", self.prefix), e))
    }

    /// Passes on the events of one etcd watch until it stops.
    async fn pump(&self, mut stream: WatchStream, cursor: &mut Cursor) -> Stop {
        let mut replay = cursor.replay();
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = self.conn.closed.cancelled() => return Stop::Done,
                _ = self.tx.closed() => return Stop::Done,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => return Stop::Broken("etcd ended the watch stream".into()),
                Err(e) => return Stop::Broken(e.to_string()),
            };
            if resp.compact_revision() > 0 {
                let compacted = StoreError::Compacted {
                    requested: cursor.revision,
                    compact_revision: resp.compact_revision(),
                };
                self.send(Err(compacted)).await;
                return Stop::Done;
            }
            for event in resp.events() {
                let mapped = match map_event(&self.conn.keys, event) {
                    Ok(mapped) => mapped,
                    Err(e) => {
                        self.send(Err(e)).await;
                        return Stop::Done;
                    }
                };
                let revision = mapped.revision();
                if !replay.is_new(revision) {
                    continue;
                }
                if !self.send(Ok(mapped)).await {
                    return Stop::Done;
                }
                cursor.advance(revision);
            }
            if resp.canceled() {
                return Stop::Broken(format!("etcd canceled the watch: {}", resp.cancel_reason()));
            }
        }
    }

    /// Sends one item; false when the reader is gone or the store closed.
    async fn send(&self, item: Result<StoreEvent, StoreError>) -> bool {
        tokio::select! {
            sent = self.tx.send(item) => sent.is_ok(),
            _ = self.conn.closed.cancelled() => false,
        }
    }
}

/// Maps one etcd event: a PUT to `Put` (revision = the key's `mod_revision`, prev from
/// `prev_kv`), a DELETE to `Delete` at the tombstone's `mod_revision` with the last state
/// from `prev_kv`. `Corrupt` if a key or value is not one this store wrote.
fn map_event(keys: &codec::Keys, event: &Event) -> Result<StoreEvent, StoreError> {
    let kv = event.kv().ok_or_else(|| StoreError::Corrupt {
        key: "(watch event)".into(),
        message: "event without a key".into(),
    })?;
    let prev = event
        .prev_kv()
        .map(|prev| codec::decode(keys, prev))
        .transpose()?;
    match event.event_type() {
        EventType::Put => Ok(StoreEvent::Put {
            entity: codec::decode(keys, kv)?,
            prev,
        }),
        EventType::Delete => {
            let prev = match prev {
                Some(prev) => prev,
                None => {
                    // etcd omits prev_kv when that revision was compacted meanwhile.
                    let id = keys.id_of(kv.key())?;
                    tracing::warn!(%id, "delete event without its last state");
                    Entity::new(id, serde_json::Value::Object(Default::default()))
                }
            };
            Ok(StoreEvent::Delete {
                prev,
                revision: kv.mod_revision(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_watch_drops_exactly_what_was_delivered() {
        let mut cursor = Cursor {
            revision: 3,
            delivered: 0,
        };
        // Two of a three-event batch at revision 5 were delivered before the break.
        cursor.advance(5);
        cursor.advance(5);
        let mut replay = cursor.replay();
        let fresh: Vec<bool> = [5, 5, 5, 6].iter().map(|&r| replay.is_new(r)).collect();
        assert_eq!(fresh, [false, false, true, true]);
    }

    #[test]
    fn a_watch_that_delivered_nothing_drops_nothing() {
        let mut replay = Cursor {
            revision: 7,
            delivered: 0,
        }
        .replay();
        assert!(replay.is_new(7));
        assert!(replay.is_new(7));
        assert!(!replay.is_new(6));
    }

    #[test]
    fn cursor_counts_events_within_one_revision() {
        let mut cursor = Cursor {
            revision: 5,
            delivered: 0,
        };
        cursor.advance(5);
        cursor.advance(5);
        assert_eq!(
            cursor,
            Cursor {
                revision: 5,
                delivered: 2
            }
        );
        cursor.advance(9);
        assert_eq!(
            cursor,
            Cursor {
                revision: 9,
                delivered: 1
            }
        );
    }
}
