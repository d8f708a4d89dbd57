//! converge-reconcilers: the controller engine and the reconcilers built on it.

pub mod artifacts;
pub mod blobs;
pub mod containerd;
pub mod engine;
pub mod gc_reconciler;
pub mod gc_report;
pub mod images;
pub mod logs;
pub mod network;
pub mod orphans;
pub mod sandbox;
pub mod services;
