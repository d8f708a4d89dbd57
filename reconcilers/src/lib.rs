//! converge-reconcilers: the controller engine and the reconcilers built on it.

pub mod artifacts;
pub mod containerd;
pub mod engine;
pub mod sandbox;
