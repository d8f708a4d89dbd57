//! The `converge` binary: CLI verbs, the entity server and the controller daemon.

fn main() {}
