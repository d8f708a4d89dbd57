//! Per-container CPU and memory of this node's sandboxes, read from their cgroups at
//! scrape time by a Prometheus collector (no background loop, no stale series).

use converge_watch::cache::Cache;
use converge_watch::spec::SandboxSpec;
use converge_watch::{EntityId, Kind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::containerd::cgroups::{CgroupLayout, CgroupUsage};
use crate::containerd::{cgroup_path, container_id};

/// One container's usage, as a scrape or `converge describe` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerUsage {
    /// The sandbox, `sandbox/<name>`.
    pub sandbox: EntityId,
    /// The container's name in the spec.
    pub container: String,
    /// What its cgroup says.
    pub usage: CgroupUsage,
}

/// The usage of the containers named `containers` of sandbox `sandbox` whose cgroup exists
/// on this host under containerd namespace `namespace` (containers without a task, or
/// whose cgroup cannot be read, are left out). Never fails.
pub fn sandbox_usage<'a>(
    layout: &CgroupLayout,
    namespace: &str,
    sandbox: &EntityId,
    containers: impl IntoIterator<Item = &'a str>,
) -> Vec<ContainerUsage> {
    containers
        .into_iter()
        .filter_map(|name| {
            let path = cgroup_path(namespace, &container_id(sandbox, name));
            match layout.usage(&path) {
                Ok(Some(usage)) => Some(ContainerUsage {
                    sandbox: sandbox.clone(),
                    container: name.to_string(),
                    usage,
                }),
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(%sandbox, container = name, error = %e, "cannot read cgroup");
                    None
                }
            }
        })
        .collect()
}

/// A Prometheus collector of `converge_sandbox_cpu_seconds_total`,
/// `converge_sandbox_memory_bytes` and `converge_sandbox_memory_peak_bytes`, labelled
/// `sandbox="sandbox/<name>"` and `container="<name>"`, for every container of every
/// sandbox in the controller's cache whose cgroup exists. Read at each scrape: a deleted
/// sandbox's series disappear with its containers.
#[derive(Debug)]
pub struct SandboxMetrics {
    cache: Cache,
    namespace: String,
    layout: CgroupLayout,
}

impl SandboxMetrics {
    /// A collector over the sandboxes of `cache`, whose containers live in containerd
    /// namespace `namespace`, on this host's cgroup layout.
    pub fn new(cache: Cache, namespace: &str) -> Self {
        Self::with_layout(cache, namespace, CgroupLayout::host().clone())
    }

    /// [`SandboxMetrics::new`] reading cgroups laid out as `layout` (tests use a temp dir).
    pub fn with_layout(cache: Cache, namespace: &str, layout: CgroupLayout) -> Self {
        Self {
            cache,
            namespace: namespace.to_string(),
            layout,
        }
    }

    /// Usage of every container of every cached sandbox with a live cgroup, by sandbox id
    /// then spec order.
    pub fn collect(&self) -> Vec<ContainerUsage> {
        let mut sandboxes = self.cache.list_kind(Kind::Sandbox);
        sandboxes.sort_by_key(|e| e.id.to_string());
        sandboxes
            .iter()
            .filter_map(|e| {
                let spec: SandboxSpec = serde_json::from_value(e.spec.clone()).ok()?;
                let names = spec.containers.iter().map(|c| c.name.as_str());
                Some(sandbox_usage(&self.layout, &self.namespace, &e.id, names))
            })
            .flatten()
            .collect()
    }
}

type Labels = [(&'static str, String); 2];

fn labels(u: &ContainerUsage) -> Labels {
    [
        ("sandbox", u.sandbox.to_string()),
        ("container", u.container.clone()),
    ]
}

impl Collector for SandboxMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.collect();
        if rows.is_empty() {
            return Ok(());
        }
        {
            let mut family = encoder.encode_descriptor(
                "converge_sandbox_cpu",
                "CPU time used by a sandbox container's processes (its cgroup)",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for u in &rows {
                let set = labels(u);
                ConstCounter::new(u.usage.cpu_seconds).encode(family.encode_family(&set)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "converge_sandbox_memory",
                "Memory charged to a sandbox container's cgroup now, page cache included",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            for u in &rows {
                let set = labels(u);
                let bytes = i64::try_from(u.usage.memory_bytes).unwrap_or(i64::MAX);
                ConstGauge::new(bytes).encode(family.encode_family(&set)?)?;
            }
        }
        let peaks: Vec<(&ContainerUsage, u64)> = rows
            .iter()
            .filter_map(|u| Some((u, u.usage.memory_peak_bytes?)))
            .collect();
        if !peaks.is_empty() {
            let mut family = encoder.encode_descriptor(
                "converge_sandbox_memory_peak",
                "Highest memory charged to a sandbox container's cgroup since its task started",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            for (u, peak) in peaks {
                let set = labels(u);
                let bytes = i64::try_from(peak).unwrap_or(i64::MAX);
                ConstGauge::new(bytes).encode(family.encode_family(&set)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_watch::{Entity, StreamEvent};
    use prometheus_client::registry::Registry;
    use serde_json::json;

    #[test]
    fn a_scrape_has_one_series_per_container_with_a_cgroup_and_none_once_deleted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = CgroupLayout::V2 {
            root: tmp.path().to_path_buf(),
        };
        let id: EntityId = "sandbox/web".parse().expect("id");
        let cg = tmp
            .path()
            .join("converge/ns")
            .join(container_id(&id, "app"));
        std::fs::create_dir_all(&cg).expect("cgroup dir");
        for (file, text) in [
            ("cpu.stat", "usage_usec 1500000\n"),
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            ("memory.max", "max\n"),
        ] {
            std::fs::write(cg.join(file), text).expect("write");
        }
        let entity = Entity::new(
            id.clone(),
            json!({"containers": [{"name": "app", "image": "busybox"},
                                  {"name": "idle", "image": "busybox"}]}),
        );
        let cache = Cache::new();
        cache.apply(&StreamEvent::Restarted {
            entities: vec![entity.clone()],
            revision: 1,
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SandboxMetrics::with_layout(
            cache.clone(),
            "ns",
            layout,
        )));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let labels = "{sandbox=\"sandbox/web\",container=\"app\"}";
        for want in [
            format!("converge_sandbox_cpu_seconds_total{labels} 1.5\n"),
            format!("converge_sandbox_memory_bytes{labels} 4096\n"),
            format!("converge_sandbox_memory_peak_bytes{labels} 8192\n"),
        ] {
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("idle"), "no cgroup, no series: {text}");

        cache.apply(&StreamEvent::Deleted {
            entity,
            revision: 2,
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(!text.contains("converge_sandbox"), "{text}");
    }
}
