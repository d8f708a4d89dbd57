//! The resumable watch stream: list, then watch from a cursor; reconnect with backoff and
//! resume from the cursor; relist when the server's history no longer reaches it.

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::backoff::{Backoff, BackoffConfig};
use crate::client::{ClientError, EntityClient, ListFilter, RawWatchEvent, RawWatchStream};
use crate::entity::Entity;
use crate::event::StreamEvent;

/// What a resumable watch needs from the server: a consistent list and a raw watch.
/// [`EntityClient`] is the real one; tests and tools may script their own.
pub trait WatchSource: Send + Sync + 'static {
    /// Lists the entities passing `filter` and the revision the list was read at.
    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<(Vec<Entity>, i64), ClientError>> + Send;

    /// Opens a watch of the entities passing `filter` from `from_revision`.
    fn watch(
        &self,
        filter: &ListFilter,
        from_revision: i64,
    ) -> impl Future<Output = Result<RawWatchStream, ClientError>> + Send;
}

impl WatchSource for EntityClient {
    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<(Vec<Entity>, i64), ClientError>> + Send {
        EntityClient::list(self, filter)
    }

    fn watch(
        &self,
        filter: &ListFilter,
        from_revision: i64,
    ) -> impl Future<Output = Result<RawWatchStream, ClientError>> + Send {
        self.watch_raw(filter, from_revision)
    }
}

/// Tunables of [`watch_stream`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// Delays between attempts to list or to (re)open the watch.
    pub backoff: BackoffConfig,
    /// A watch silent this long (not even a `PROGRESS`) is presumed stuck and reopened
    /// from the cursor; `None` trusts the connection forever. The server sends `PROGRESS`
    /// every few seconds when idle, so the default of 60 s only trips on a real stall.
    pub idle_timeout: Option<Duration>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            backoff: BackoffConfig::default(),
            idle_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl StreamConfig {
    /// The default config with a backoff starting at `base` and capped at `max` (handy in tests).
    pub fn with_backoff(base: Duration, max: Duration) -> Self {
        Self {
            backoff: BackoffConfig {
                base,
                max,
                ..BackoffConfig::default()
            },
            ..StreamConfig::default()
        }
    }
}

/// Follows the entities passing `filter`, forever. The first item is a
/// [`StreamEvent::Restarted`] with the full list; then each change arrives once, in revision
/// order, as `Applied` or `Deleted`. After a disconnect the watch resumes from the last
/// revision seen, so nothing is missed or repeated; when the server's history no longer
/// reaches that revision, a fresh `Restarted` follows (anything not in it was deleted).
///
/// The stream never ends and never yields errors: failures are logged with `tracing` and
/// retried with exponential backoff. It does nothing until polled and stops when dropped.
pub fn watch_stream(
    client: EntityClient,
    filter: ListFilter,
    config: StreamConfig,
) -> impl Stream<Item = StreamEvent> + Send + 'static {
    watch_stream_from(client, filter, config)
}

/// [`watch_stream`] over any [`WatchSource`], with the same guarantees.
pub fn watch_stream_from<S: WatchSource>(
    source: S,
    filter: ListFilter,
    config: StreamConfig,
) -> impl Stream<Item = StreamEvent> + Send + 'static {
    let watcher = Watcher {
        source,
        filter,
        backoff: Backoff::new(config.backoff),
        idle_timeout: config.idle_timeout,
        cursor: 0,
        need_list: true,
        watch: None,
        connected_at: None,
    };
    futures::stream::unfold(watcher, |mut w| async move {
        let event = w.next_event().await;
        Some((event, w))
    })
}

/// The state of one resumable watch.
struct Watcher<S> {
    source: S,
    filter: ListFilter,
    backoff: Backoff,
    idle_timeout: Option<Duration>,
    /// Last revision delivered or known to be passed (list revision, events, progress).
    cursor: i64,
    /// A fresh list is needed before watching (at start and after compaction).
    need_list: bool,
    watch: Option<RawWatchStream>,
    /// When the current watch was opened, to reset the backoff after a healthy period.
    connected_at: Option<Instant>,
}

impl<S: WatchSource> Watcher<S> {
    /// Runs until there is an event to hand out.
    async fn next_event(&mut self) -> StreamEvent {
        loop {
            let Some(watch) = self.watch.as_mut() else {
                if self.need_list {
                    if let Some(event) = self.relist().await {
                        return event;
                    }
                } else {
                    self.open_watch().await;
                }
                continue;
            };
            let next = match self.idle_timeout {
                None => watch.next().await,
                Some(limit) => match tokio::time::timeout(limit, watch.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::warn!(cursor = self.cursor, silent_for = ?limit, "watch went silent; reopening");
                        self.disconnected(true).await;
                        continue;
                    }
                },
            };
            match next {
                Some(Ok(RawWatchEvent::Put(entity))) => {
                    let revision = entity.revision;
                    if revision <= self.cursor {
                        tracing::debug!(entity = %entity.id, revision, cursor = self.cursor, "skipping replayed put");
                        continue;
                    }
                    self.cursor = revision;
                    if !self.filter.matches(&entity) {
                        // It moved out of our filter (e.g. to another node): gone for us.
                        tracing::debug!(entity = %entity.id, revision, "entity left the filter");
                        return StreamEvent::Deleted { entity, revision };
                    }
                    tracing::trace!(entity = %entity.id, revision, "applied");
                    return StreamEvent::Applied(entity);
                }
                Some(Ok(RawWatchEvent::Delete { entity, revision })) => {
                    if revision <= self.cursor {
                        tracing::debug!(entity = %entity.id, revision, cursor = self.cursor, "skipping replayed delete");
                        continue;
                    }
                    self.cursor = revision;
                    tracing::trace!(entity = %entity.id, revision, "deleted");
                    return StreamEvent::Deleted { entity, revision };
                }
                Some(Ok(RawWatchEvent::Progress { revision })) => {
                    self.cursor = self.cursor.max(revision);
                }
                Some(Ok(RawWatchEvent::Compacted { compact_revision })) => {
                    tracing::info!(
                        cursor = self.cursor,
                        compact_revision,
                        "watch fell behind the server's history; relisting"
                    );
                    self.need_list = true;
                    self.disconnected(true).await;
                }
                Some(Err(error)) => {
                    self.need_list = !error.is_retryable();
                    tracing::warn!(error = %chain(&error), cursor = self.cursor, relist = self.need_list, "watch broke; resuming");
                    self.disconnected(false).await;
                }
                None => {
                    tracing::info!(cursor = self.cursor, "server ended the watch; resuming");
                    self.disconnected(false).await;
                }
            }
        }
    }

    /// Lists, returning `Restarted` on success; on failure waits out the backoff and
    /// returns `None`.
    async fn relist(&mut self) -> Option<StreamEvent> {
        match self.source.list(&self.filter).await {
            Ok((entities, revision)) => {
                tracing::debug!(count = entities.len(), revision, "listed");
                self.cursor = revision;
                self.need_list = false;
                Some(StreamEvent::Restarted { entities, revision })
            }
            Err(error) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(error = %chain(&error), retry_in = ?delay, "listing entities failed");
                tokio::time::sleep(delay).await;
                None
            }
        }
    }

    /// Opens the watch from the cursor; on failure waits out the backoff.
    async fn open_watch(&mut self) {
        match self.source.watch(&self.filter, self.cursor + 1).await {
            Ok(watch) => {
                tracing::debug!(from_revision = self.cursor + 1, "watching");
                self.watch = Some(watch);
                self.connected_at = Some(Instant::now());
            }
            Err(error) => {
                // Retrying the same request cannot fix a refusal (e.g. a server answering a
                // compacted revision with an error rather than COMPACTED): start over instead.
                self.need_list = !error.is_retryable();
                let delay = self.backoff.next_delay();
                tracing::warn!(error = %chain(&error), retry_in = ?delay, relist = self.need_list, "opening watch failed");
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Drops the current watch. Resets the backoff if it was healthy long enough; then waits
    /// the next delay, except when `at_once_if_fresh` and the backoff is fresh (a first
    /// compaction or stall is handled at once).
    async fn disconnected(&mut self, at_once_if_fresh: bool) {
        self.watch = None;
        if let Some(since) = self.connected_at.take() {
            self.backoff.record_healthy(since.elapsed());
        }
        let fresh = self.backoff.attempts() == 0;
        let delay = self.backoff.next_delay();
        if at_once_if_fresh && fresh {
            return;
        }
        tracing::debug!(retry_in = ?delay, "waiting before reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// `error` and its sources, joined by ": ", for one-line logs.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
