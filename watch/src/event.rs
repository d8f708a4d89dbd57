//! What a resumable watch stream hands its consumers.

use crate::entity::Entity;

/// One step of a resumable watch, as seen by a cache or a controller.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A full, consistent list at `revision`: the first one after connecting, or after the
    /// server answered `compacted`. Anything a consumer knew that is not in `entities` has
    /// been deleted meanwhile.
    Restarted {
        /// Every entity matching the watch's filter.
        entities: Vec<Entity>,
        /// Store revision the list was read at.
        revision: i64,
    },
    /// Created or updated.
    Applied(Entity),
    /// Deleted; the entity is its last known state, `revision` is the deletion's.
    Deleted {
        /// Last state before deletion.
        entity: Entity,
        /// Store revision of the deletion.
        revision: i64,
    },
}
