//! The cache: the latest known state of every watched entity, fed by a watch stream.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use futures::{Stream, StreamExt};

use crate::entity::{Entity, EntityId, Kind};
use crate::event::StreamEvent;

/// Entities by id as of `revision`, updated atomically per event.
#[derive(Debug, Default)]
struct Snapshot {
    entities: BTreeMap<EntityId, Arc<Entity>>,
    revision: i64,
}

#[derive(Debug)]
struct Shared {
    snapshot: RwLock<Snapshot>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// A shared, in-memory copy of the watched entities. Cloning is cheap; clones share state.
/// Readers never block each other; each [`Cache::apply`] is atomic for them.
#[derive(Debug, Clone)]
pub struct Cache {
    shared: Arc<Shared>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// An empty cache that is not ready yet.
    pub fn new() -> Self {
        let (ready, _) = tokio::sync::watch::channel(false);
        Self {
            shared: Arc::new(Shared {
                snapshot: RwLock::new(Snapshot::default()),
                ready,
            }),
        }
    }

    /// Applies one event and returns the ids whose state changed.
    ///
    /// `Restarted` replaces the whole content and returns every id added, changed or
    /// **removed** (removed ones were deleted while the stream was not looking); it also
    /// makes the cache ready. `Applied` and `Deleted` at a revision not newer than the
    /// cache's are stale (replayed or out of order) and ignored, returning no ids; so is a
    /// `Deleted` of an unknown id (apart from advancing the revision).
    pub fn apply(&self, event: &StreamEvent) -> Vec<EntityId> {
        let changed = {
            let mut snap = self
                .shared
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match event {
                StreamEvent::Restarted { entities, revision } => {
                    let mut fresh = BTreeMap::new();
                    let mut changed = Vec::new();
                    for entity in entities {
                        let unchanged = snap
                            .entities
                            .get(&entity.id)
                            .is_some_and(|old| **old == *entity);
                        if !unchanged {
                            changed.push(entity.id.clone());
                        }
                        fresh.insert(entity.id.clone(), Arc::new(entity.clone()));
                    }
                    changed.extend(
                        snap.entities
                            .keys()
                            .filter(|id| !fresh.contains_key(*id))
                            .cloned(),
                    );
                    snap.entities = fresh;
                    snap.revision = *revision;
                    changed
                }
                StreamEvent::Applied(entity) => {
                    if entity.revision <= snap.revision {
                        tracing::debug!(entity = %entity.id, revision = entity.revision, cache_revision = snap.revision, "ignoring stale update");
                        return Vec::new();
                    }
                    snap.revision = entity.revision;
                    snap.entities
                        .insert(entity.id.clone(), Arc::new(entity.clone()));
                    vec![entity.id.clone()]
                }
                StreamEvent::Deleted { entity, revision } => {
                    if *revision <= snap.revision {
                        tracing::debug!(entity = %entity.id, revision, cache_revision = snap.revision, "ignoring stale deletion");
                        return Vec::new();
                    }
                    snap.revision = *revision;
                    match snap.entities.remove(&entity.id) {
                        Some(_) => vec![entity.id.clone()],
                        None => Vec::new(),
                    }
                }
            }
        };
        if matches!(event, StreamEvent::Restarted { .. }) {
            self.shared.ready.send_replace(true);
        }
        changed
    }

    /// The cached state of one entity, if it is known and not deleted.
    pub fn get(&self, id: &EntityId) -> Option<Arc<Entity>> {
        self.read(|s| s.entities.get(id).cloned())
    }

    /// Every cached entity, ordered by id.
    pub fn list(&self) -> Vec<Arc<Entity>> {
        self.read(|s| s.entities.values().cloned().collect())
    }

    /// The cached entities of one kind, ordered by id.
    pub fn list_kind(&self, kind: Kind) -> Vec<Arc<Entity>> {
        self.read(|s| {
            s.entities
                .values()
                .filter(|e| e.kind == kind)
                .cloned()
                .collect()
        })
    }

    /// Every cached id, ordered.
    pub fn ids(&self) -> Vec<EntityId> {
        self.read(|s| s.entities.keys().cloned().collect())
    }

    /// How many entities are cached.
    pub fn len(&self) -> usize {
        self.read(|s| s.entities.len())
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store revision the cache reflects (0 before anything was applied).
    pub fn revision(&self) -> i64 {
        self.read(|s| s.revision)
    }

    /// True once a full list (`Restarted`) has been applied.
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Waits until a full list has been applied; returns at once if it already was.
    pub async fn wait_ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    fn read<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        let snap = self
            .shared
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&snap)
    }
}

/// Applies each event of `stream` to `cache` before passing it on, with the ids it changed
/// (empty for stale events, which are still passed on). A consumer reading from the result
/// always finds the cache at least as new as the event in hand.
pub fn reflect<S>(
    stream: S,
    cache: Cache,
) -> impl Stream<Item = (StreamEvent, Vec<EntityId>)> + Send + 'static
where
    S: Stream<Item = StreamEvent> + Send + 'static,
{
    stream.map(move |event| {
        let changed = cache.apply(&event);
        (event, changed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity(name: &str, revision: i64) -> Entity {
        let mut e = Entity::new(
            EntityId::new(Kind::Sandbox, name).expect("id"),
            json!({"v": revision}),
        );
        e.revision = revision;
        e
    }

    fn id(name: &str) -> EntityId {
        EntityId::new(Kind::Sandbox, name).expect("id")
    }

    #[test]
    fn restart_reports_added_changed_and_vanished_ids_but_not_unchanged_ones() {
        let cache = Cache::new();
        cache.apply(&StreamEvent::Restarted {
            entities: vec![entity("a", 1), entity("b", 2), entity("c", 3)],
            revision: 3,
        });
        let changed = cache.apply(&StreamEvent::Restarted {
            entities: vec![entity("a", 1), entity("b", 5), entity("d", 6)],
            revision: 9,
        });
        let mut changed: Vec<String> = changed.iter().map(ToString::to_string).collect();
        changed.sort();
        assert_eq!(changed, ["sandbox/b", "sandbox/c", "sandbox/d"]);
        assert!(cache.get(&id("c")).is_none(), "vanished id is removed");
        assert_eq!(cache.ids(), [id("a"), id("b"), id("d")]);
        assert_eq!(cache.revision(), 9);
    }

    #[test]
    fn stale_or_duplicate_revisions_are_ignored() {
        let cache = Cache::new();
        cache.apply(&StreamEvent::Restarted {
            entities: vec![entity("a", 4)],
            revision: 10,
        });
        assert!(
            cache
                .apply(&StreamEvent::Applied(entity("a", 7)))
                .is_empty(),
            "older than the list"
        );
        assert_eq!(
            cache.apply(&StreamEvent::Applied(entity("a", 11))),
            [id("a")]
        );
        assert!(
            cache
                .apply(&StreamEvent::Applied(entity("a", 11)))
                .is_empty(),
            "duplicate"
        );
        let deleted = StreamEvent::Deleted {
            entity: entity("a", 11),
            revision: 11,
        };
        assert!(
            cache.apply(&deleted).is_empty(),
            "deletion at an already seen revision"
        );
        assert_eq!(cache.get(&id("a")).expect("still there").revision, 11);
        let deleted = StreamEvent::Deleted {
            entity: entity("a", 11),
            revision: 12,
        };
        assert_eq!(cache.apply(&deleted), [id("a")]);
        assert!(
            cache
                .apply(&StreamEvent::Applied(entity("a", 12)))
                .is_empty(),
            "no resurrection"
        );
        assert!(cache.is_empty());
        assert_eq!(cache.revision(), 12);
    }

    #[test]
    fn deleting_an_unknown_id_changes_nothing() {
        let cache = Cache::new();
        let deleted = StreamEvent::Deleted {
            entity: entity("x", 1),
            revision: 2,
        };
        assert!(cache.apply(&deleted).is_empty());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn list_kind_returns_only_that_kind() {
        let cache = Cache::new();
        let artifact = Entity::new("artifact/img".parse().expect("id"), json!({}));
        cache.apply(&StreamEvent::Restarted {
            entities: vec![entity("a", 1), artifact],
            revision: 2,
        });
        assert_eq!(cache.list_kind(Kind::Artifact).len(), 1);
        assert_eq!(cache.list_kind(Kind::Sandbox)[0].id, id("a"));
        assert!(cache.list_kind(Kind::Service).is_empty());
        assert_eq!(cache.list().len(), 2);
    }

    #[tokio::test]
    async fn becomes_ready_only_after_the_first_full_list() {
        let cache = Cache::new();
        assert!(!cache.is_ready());
        cache.apply(&StreamEvent::Applied(entity("a", 1)));
        assert!(!cache.is_ready(), "a single update is not a full picture");
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { cache.wait_ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cache.apply(&StreamEvent::Restarted {
            entities: vec![],
            revision: 1,
        });
        waiter.await.expect("waiter finishes");
        assert!(cache.is_ready());
        cache.wait_ready().await;
    }

    #[tokio::test]
    async fn reflect_updates_the_cache_before_handing_out_the_event() {
        let cache = Cache::new();
        let events = vec![
            StreamEvent::Restarted {
                entities: vec![entity("a", 1)],
                revision: 1,
            },
            StreamEvent::Applied(entity("b", 2)),
            StreamEvent::Applied(entity("b", 2)),
        ];
        let mut out = Box::pin(reflect(futures::stream::iter(events), cache.clone()));
        let (_, changed) = out.next().await.expect("restart");
        assert_eq!(changed, [id("a")]);
        let (ev, changed) = out.next().await.expect("applied");
        assert_eq!(changed, [id("b")]);
        assert!(matches!(ev, StreamEvent::Applied(_)));
        assert!(cache.get(&id("b")).is_some());
        let (_, changed) = out.next().await.expect("duplicate passes through");
        assert!(changed.is_empty());
    }
}
