//! converge-watch: the entity model, the gRPC API, a client, the resumable watch stream and the cache.

pub mod address;
pub mod backoff;
pub mod cache;
pub mod client;
pub mod entity;
pub mod event;
pub mod spec;
pub mod stream;
pub mod validate;

/// Code generated from `proto/converge/v1/entities.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("converge.v1");
}

pub use address::ServerAddress;
pub use backoff::{Backoff, BackoffConfig, Jitter};
pub use cache::{Cache, reflect};
pub use client::{
    BearerToken, ClientError, ClientOptions, EntityClient, ListFilter, PutSpec, RawWatchEvent,
    RawWatchStream,
};
pub use entity::{Entity, EntityId, IdError, Kind};
pub use event::StreamEvent;
pub use stream::{StreamConfig, WatchSource, watch_stream, watch_stream_from};
pub use validate::{ValidationError, validate};
