//! converge-reconcilers: the controller engine and the reconcilers built on it.

pub mod containerd;
pub mod engine;
pub mod sandbox;
