//! The entity server: the gRPC API over a store, its listeners and shutdown.

pub mod store;
