//! The pure part of the service controller: which sandboxes a selector matches, which of
//! them are endpoints, and the status document that lists them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use converge_watch::spec::{DesiredState, Phase, SandboxSpec, SandboxStatus, ServiceSpec};
use converge_watch::{Entity, EntityId, Kind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Status key holding the hash of the spec `observed_revision` refers to.
pub const OBSERVED_SPEC_KEY: &str = "observed_spec";

/// How many not-ready sandboxes the status message names before summarising the rest.
const NAMED_NOT_READY: usize = 3;

/// One address a service's traffic can go to: a running, port-ready sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The sandbox's address (`status.ip`).
    pub ip: String,
    /// The service's `target_port` (its `port` when unset).
    pub port: u32,
    /// `ip:port` (`[ip]:port` for IPv6), ready to dial.
    pub address: String,
    /// The node running the sandbox: its `spec.node`, else the controller's default node
    /// (the one node of `converge up`), else empty.
    pub node: String,
    /// The sandbox's id, `sandbox/<name>`.
    pub sandbox: EntityId,
}

/// `status` of a `service`. Unknown fields are kept so that newer controllers can add some.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Every endpoint, sorted by address (IP numerically, then port), then sandbox id.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Revision of the service whose spec this status describes; moves only when the spec
    /// changes, not on every status write.
    #[serde(default)]
    pub observed_revision: i64,
    /// Human-readable summary: how many endpoints, which matching sandboxes are not ready.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Why a sandbox matching a selector is not an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// Its spec asks for `state: stopped`.
    Stopped,
    /// Its phase is not `running` (pending, failed, stopped, dead, or no status yet).
    Phase(Phase),
    /// Running, but no address is known (host network, or not connected yet).
    NoAddress,
    /// `status.ip` is not an IP address.
    BadAddress(String),
    /// None of its containers declares the target port, so nothing checked that it listens.
    PortNotDeclared(u32),
    /// Its spec does not parse as a sandbox spec.
    BadSpec,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Stopped => f.write_str("state stopped"),
            NotReady::Phase(p) => {
                let text = serde_json::to_value(p)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{p:?}"));
                write!(f, "{text}")
            }
            NotReady::NoAddress => f.write_str("no ip"),
            NotReady::BadAddress(ip) => write!(f, "bad ip {ip:?}"),
            NotReady::PortNotDeclared(port) => write!(f, "port {port} not declared"),
            NotReady::BadSpec => f.write_str("invalid spec"),
        }
    }
}

/// The outcome of matching one service against every known sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSet {
    /// The endpoints, sorted (see [`ServiceStatus::endpoints`]).
    pub endpoints: Vec<Endpoint>,
    /// Sandboxes the selector matches that are not endpoints, and why, by id.
    pub not_ready: Vec<(EntityId, NotReady)>,
}

/// True when `labels` carry every `key=value` of `selector`. An empty selector matches
/// nothing: a service must say what it selects (validation refuses empty selectors, and a
/// stored one that slipped through selects no sandbox rather than all of them).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// [`selector_matches`] against a sandbox's `spec.labels`, read straight from its JSON
/// (no parse, no allocation: this runs for every sandbox at every reconcile).
pub fn selects(selector: &BTreeMap<String, String>, sandbox: &Entity) -> bool {
    let labels = &sandbox.spec["labels"];
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels[k.as_str()].as_str() == Some(v.as_str()))
}

/// [`selects`] with the selector still as the JSON of a service's `spec.selector`: false
/// when it is not a non-empty object of strings.
pub fn json_selects(selector: &Value, sandbox: &Entity) -> bool {
    let labels = &sandbox.spec["labels"];
    selector.as_object().is_some_and(|pairs| {
        !pairs.is_empty()
            && pairs
                .iter()
                .all(|(k, v)| v.as_str().is_some() && labels[k.as_str()].as_str() == v.as_str())
    })
}

/// The port endpoints of `spec` use: `target_port`, else `port`.
pub fn target_port(spec: &ServiceSpec) -> u32 {
    spec.target_port.unwrap_or(spec.port)
}

/// The endpoints of `spec` among `sandboxes` (entities of other kinds are skipped). A
/// matching sandbox is an endpoint when its spec asks for `running`, its phase is
/// `running` (which the sandbox reconciler reports only once its declared ports listen),
/// it has an IP, and one of its containers declares the target port. `default_node`
/// names the node of sandboxes that name none. Never fails: anything odd about a sandbox
/// makes it a not-ready match, with the reason.
pub fn compute_endpoints<'a>(
    spec: &ServiceSpec,
    sandboxes: impl IntoIterator<Item = &'a Entity>,
    default_node: &str,
) -> EndpointSet {
    let port = target_port(spec);
    let mut set = EndpointSet::default();
    let mut sortable: Vec<(IpAddr, Endpoint)> = Vec::new();
    for sandbox in sandboxes {
        if sandbox.kind != Kind::Sandbox || !selects(&spec.selector, sandbox) {
            continue;
        }
        match endpoint_of(sandbox, port, default_node) {
            Ok((ip, endpoint)) => sortable.push((ip, endpoint)),
            Err(why) => set.not_ready.push((sandbox.id.clone(), why)),
        }
    }
    sortable.sort_by(|(a, x), (b, y)| {
        (a, x.port, x.sandbox.name()).cmp(&(b, y.port, y.sandbox.name()))
    });
    set.endpoints = sortable.into_iter().map(|(_, e)| e).collect();
    set.not_ready
        .sort_by(|(a, _), (b, _)| a.name().cmp(b.name()));
    set
}

fn endpoint_of(
    sandbox: &Entity,
    port: u32,
    default_node: &str,
) -> Result<(IpAddr, Endpoint), NotReady> {
    let spec: SandboxSpec =
        serde_json::from_value(sandbox.spec.clone()).map_err(|_| NotReady::BadSpec)?;
    if spec.state == DesiredState::Stopped {
        return Err(NotReady::Stopped);
    }
    let status: SandboxStatus = serde_json::from_value(sandbox.status.clone()).unwrap_or_default();
    if status.phase != Phase::Running {
        return Err(NotReady::Phase(status.phase));
    }
    let text = status
        .ip
        .filter(|s| !s.is_empty())
        .ok_or(NotReady::NoAddress)?;
    let ip: IpAddr = text
        .parse()
        .map_err(|_| NotReady::BadAddress(text.clone()))?;
    let declared = spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .any(|p| p.port == port);
    if !declared {
        return Err(NotReady::PortNotDeclared(port));
    }
    let address = u16::try_from(port)
        .map(|p| SocketAddr::new(ip, p).to_string())
        .unwrap_or_else(|_| format!("{ip}:{port}"));
    let node = if spec.node.is_empty() {
        default_node.to_string()
    } else {
        spec.node
    };
    Ok((
        ip,
        Endpoint {
            ip: ip.to_string(),
            port,
            address,
            node,
            sandbox: sandbox.id.clone(),
        },
    ))
}

/// The human-readable summary of `set`: `2 endpoints`, `no sandbox matches app=web`, or
/// `1 endpoint; not ready: web-3 (pending), web-4 (no ip)` (at most three named, then
/// `and N more`).
pub fn message_for(spec: &ServiceSpec, set: &EndpointSet) -> String {
    if set.endpoints.is_empty() && set.not_ready.is_empty() {
        let selector: Vec<String> = spec
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return format!("no sandbox matches {}", selector.join(","));
    }
    let n = set.endpoints.len();
    let mut text = format!("{n} endpoint{}", if n == 1 { "" } else { "s" });
    if !set.not_ready.is_empty() {
        let named: Vec<String> = set
            .not_ready
            .iter()
            .take(NAMED_NOT_READY)
            .map(|(id, why)| format!("{} ({why})", id.name()))
            .collect();
        text.push_str("; not ready: ");
        text.push_str(&named.join(", "));
        if set.not_ready.len() > NAMED_NOT_READY {
            text.push_str(&format!(
                " and {} more",
                set.not_ready.len() - NAMED_NOT_READY
            ));
        }
    }
    text
}

/// Short hash of a service spec (16 hex digits of SHA-256 of its JSON).
pub fn spec_hash(spec: &ServiceSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..8])
}

/// The status to write onto `current` (which may be fresher than what the reconcile read)
/// for `spec` and its endpoints: `observed_revision` keeps its value while the spec hash is
/// the one already observed (so the status is stable and only rewritten when endpoints,
/// message or spec change); unknown status fields are kept. `None` when the result cannot
/// be encoded (never expected).
pub fn status_for(current: &Entity, spec: &ServiceSpec, set: &EndpointSet) -> Option<Value> {
    let prev: ServiceStatus = serde_json::from_value(current.status.clone()).unwrap_or_default();
    let hash = spec_hash(spec);
    let same_spec = prev.extra.get(OBSERVED_SPEC_KEY).and_then(Value::as_str) == Some(&hash);
    let observed_revision = if same_spec && prev.observed_revision > 0 {
        prev.observed_revision
    } else {
        current.revision
    };
    let mut extra = prev.extra;
    extra.insert(OBSERVED_SPEC_KEY.to_string(), Value::String(hash));
    let status = ServiceStatus {
        endpoints: set.endpoints.clone(),
        observed_revision,
        message: message_for(spec, set),
        extra,
    };
    serde_json::to_value(status).ok()
}

/// True when `service`'s status lists `sandbox` (its id as text) as an endpoint; read
/// straight from the JSON.
pub fn lists(service: &Entity, sandbox: &str) -> bool {
    service.status["endpoints"]
        .as_array()
        .is_some_and(|list| list.iter().any(|e| e["sandbox"].as_str() == Some(sandbox)))
}
