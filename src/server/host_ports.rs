//! The put path's host-port check: a sandbox may not publish a `host_port` that another sandbox on the same node already publishes, nor one port twice.
//!
//! The check reads the store and then the put writes it, so two servers (or two puts at
//! once) can still race past it; the node's controller then reports the loser `failed`
//! instead of taking the port (see `docs/network.md`, "Published host ports").

use std::collections::{BTreeMap, BTreeSet};

use converge_watch::{EntityId, Kind};
use serde_json::Value;
use tonic::Status;

use crate::server::store::{PutOp, Store, StoreError};

/// Why a put was refused for its host ports, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum HostPortError {
    /// Another sandbox on the same node already publishes the port.
    #[error(
        "{id}: host port {host_port} is already published by {other} on {}",
        node_text(.node)
    )]
    Taken {
        /// The sandbox being put.
        id: EntityId,
        /// The contested port.
        host_port: u64,
        /// The sandbox that has it.
        other: EntityId,
        /// The node both name (empty: none).
        node: String,
    },
    /// The sandbox asks for one host port twice.
    #[error("{id}: host port {host_port} is requested twice")]
    Twice {
        /// The sandbox being put.
        id: EntityId,
        /// The repeated port.
        host_port: u64,
    },
    /// The other sandboxes could not be read.
    #[error("cannot check host ports against the stored sandboxes")]
    Store(#[source] StoreError),
}

impl HostPortError {
    /// The gRPC answer: `FAILED_PRECONDITION` for a port taken, `INVALID_ARGUMENT` for a
    /// port asked twice, the store's own mapping otherwise.
    pub fn into_status(self) -> Status {
        match self {
            e @ HostPortError::Taken { .. } => Status::failed_precondition(e.to_string()),
            e @ HostPortError::Twice { .. } => Status::invalid_argument(e.to_string()),
            HostPortError::Store(e) => crate::server::grpc::status_from_store(e),
        }
    }
}

/// Refuses `ops` when a sandbox among them publishes a host port twice, or one that
/// another sandbox naming the same `spec.node` publishes — in the store or elsewhere in
/// `ops`. Sandboxes replaced by `ops` are judged by their new spec. Reads the store only
/// when some op publishes a host port; changes nothing.
pub async fn check_host_ports(store: &dyn Store, ops: &[PutOp]) -> Result<(), HostPortError> {
    let mut incoming = BTreeMap::new();
    for op in ops.iter().filter(|op| op.id.kind() == Kind::Sandbox) {
        let ports = host_ports(&op.spec);
        let mut seen = BTreeSet::new();
        if let Some(port) = ports.iter().find(|p| !seen.insert(**p)) {
            return Err(HostPortError::Twice {
                id: op.id.clone(),
                host_port: *port,
            });
        }
        incoming.insert(op.id.clone(), (node_of(&op.spec).to_string(), ports));
    }
    if incoming.values().all(|(_, ports)| ports.is_empty()) {
        return Ok(());
    }
    let stored = store
        .list(Some(Kind::Sandbox))
        .await
        .map_err(HostPortError::Store)?;
    // (node, port) -> holder: stored sandboxes not replaced here, then the incoming ones.
    let mut holders: BTreeMap<(String, u64), EntityId> = BTreeMap::new();
    for entity in stored
        .entities
        .iter()
        .filter(|e| !incoming.contains_key(&e.id))
    {
        for port in host_ports(&entity.spec) {
            holders.insert((entity.node().to_string(), port), entity.id.clone());
        }
    }
    for (id, (node, ports)) in incoming {
        for port in ports {
            if let Some(other) = holders.insert((node.clone(), port), id.clone()) {
                return Err(HostPortError::Taken {
                    id,
                    host_port: port,
                    other,
                    node,
                });
            }
        }
    }
    Ok(())
}

/// Every `host_port` a sandbox spec asks for (tolerant of any JSON: what is not a port
/// is skipped).
fn host_ports(spec: &Value) -> Vec<u64> {
    spec.get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("ports").and_then(Value::as_array))
        .flatten()
        .filter_map(|p| p.get("host_port").and_then(Value::as_u64))
        .collect()
}

fn node_of(spec: &Value) -> &str {
    spec.get("node").and_then(Value::as_str).unwrap_or("")
}

fn node_text(node: &str) -> String {
    if node.is_empty() {
        "the same node (none named)".to_string()
    } else {
        format!("node {node:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn web(node: &str, host_ports: &[u64]) -> Value {
        let ports: Vec<Value> = host_ports
            .iter()
            .enumerate()
            .map(|(i, h)| json!({"port": 8000 + i, "host_port": h}))
            .collect();
        json!({"node": node, "containers": [{"name": "a", "image": "x", "ports": ports}]})
    }

    #[test]
    fn host_ports_are_read_from_every_container_and_junk_is_skipped() {
        assert_eq!(host_ports(&web("n", &[80, 81])), [80, 81]);
        assert!(host_ports(&json!({"containers": "nope"})).is_empty());
        assert!(host_ports(&json!(null)).is_empty());
    }

    fn put(name: &str, spec: Value) -> PutOp {
        PutOp {
            id: format!("sandbox/{name}").parse().expect("id"),
            spec,
            expected_revision: None,
        }
    }

    #[tokio::test]
    async fn a_port_is_refused_only_on_the_node_that_already_publishes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::server::store::RedbStore::open(&dir.path().join("s.redb"), 100)
            .await
            .expect("store");
        store
            .put(vec![put("a", web("n1", &[8080]))])
            .await
            .expect("put a");

        let taken = check_host_ports(&store, &[put("b", web("n1", &[9090, 8080]))]).await;
        assert!(
            matches!(&taken, Err(HostPortError::Taken { other, host_port: 8080, .. }) if other.name() == "a"),
            "{taken:?}"
        );
        check_host_ports(&store, &[put("b", web("n2", &[8080]))])
            .await
            .expect("another node may use it");
        check_host_ports(&store, &[put("a", web("n1", &[8080]))])
            .await
            .expect("a sandbox keeps its own port");
        let moved = [put("a", web("n1", &[8081])), put("b", web("n1", &[8080]))];
        check_host_ports(&store, &moved)
            .await
            .expect("a batch that moves a off the port frees it for b");
        let both = [put("c", web("n3", &[1])), put("d", web("n3", &[1]))];
        assert!(matches!(
            check_host_ports(&store, &both).await,
            Err(HostPortError::Taken { .. })
        ));
        assert!(matches!(
            check_host_ports(&store, &[put("e", web("n1", &[7, 7]))]).await,
            Err(HostPortError::Twice { host_port: 7, .. })
        ));
    }

    #[test]
    fn a_taken_port_names_the_other_sandbox_and_the_node() {
        let e = HostPortError::Taken {
            id: "sandbox/b".parse().expect("id"),
            host_port: 8080,
            other: "sandbox/a".parse().expect("id"),
            node: "n1".into(),
        };
        assert_eq!(
            e.to_string(),
            "sandbox/b: host port 8080 is already published by sandbox/a on node \"n1\""
        );
        assert_eq!(e.into_status().code(), tonic::Code::FailedPrecondition);
    }
}
