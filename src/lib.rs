//! The converge library behind the binary: the entity server, its stores, the artifact
//! registry, the CLI verbs and the daemon wiring.

pub mod artifact;
pub mod blobs;
pub mod cli;
pub mod daemon;
pub mod http;
pub mod logdriver;
pub mod registry;
pub mod server;
pub mod server_process;
pub mod telemetry;
pub mod tls;
