//! Service controller benchmarks: one service's endpoint computation over a large sandbox
//! set, and the mapping of one sandbox event among many services. Run:
//! `cargo bench -p converge-reconcilers --bench services`.

use std::collections::BTreeMap;

use converge_reconcilers::services::{SandboxEventMapper, compute_endpoints};
use converge_watch::cache::Cache;
use converge_watch::spec::{SandboxSpec, ServiceSpec};
use converge_watch::{Entity, EntityId, StreamEvent};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

/// How many distinct `app` labels the sandboxes spread over.
const APPS: usize = 10;

fn id(text: &str) -> EntityId {
    text.parse().expect("id")
}

/// `n` running sandboxes with an IP, labelled `app=app-<i % APPS>`, each declaring 8080.
fn sandboxes(n: usize) -> Vec<Entity> {
    (0..n)
        .map(|i| {
            let mut e = Entity::new(
                id(&format!("sandbox/s-{i}")),
                json!({"node": format!("node-{}", i % 3),
                       "labels": {"app": format!("app-{}", i % APPS), "tier": "front"},
                       "containers": [{"name": "c", "image": "busybox",
                                       "ports": [{"port": 8080}]}]}),
            );
            e.status = json!({"phase": "running",
                              "ip": format!("10.88.{}.{}", i / 250, i % 250 + 1)});
            e.revision = i64::try_from(i).unwrap_or(0) + 1;
            e
        })
        .collect()
}

fn spec_for(app: &str) -> ServiceSpec {
    ServiceSpec {
        selector: BTreeMap::from([("app".to_string(), app.to_string())]),
        port: 80,
        target_port: Some(8080),
    }
}

/// Baseline: parse every sandbox's spec, then match its labels (what a straightforward
/// implementation does; `compute_endpoints` matches on the JSON first and parses only
/// the sandboxes selected).
fn naive_selected(spec: &ServiceSpec, all: &[Entity]) -> usize {
    all.iter()
        .filter_map(|e| serde_json::from_value::<SandboxSpec>(e.spec.clone()).ok())
        .filter(|s| {
            spec.selector
                .iter()
                .all(|(k, v)| s.labels.get(k) == Some(v))
        })
        .count()
}

fn bench_compute(c: &mut Criterion) {
    let mut group = c.benchmark_group("services_compute_endpoints");
    for n in [1_000usize, 10_000] {
        let all = sandboxes(n);
        let spec = spec_for("app-3");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("converge", n), &all, |b, all| {
            b.iter(|| compute_endpoints(&spec, all, "node-0"));
        });
        group.bench_with_input(BenchmarkId::new("parse_all_baseline", n), &all, |b, all| {
            b.iter(|| naive_selected(&spec, all));
        });
    }
    group.finish();
}

fn bench_mapper(c: &mut Criterion) {
    let mut group = c.benchmark_group("services_map_sandbox_event");
    for services in [100usize, 1_000] {
        let service_cache = Cache::new();
        let list: Vec<Entity> = (0..services)
            .map(|i| {
                let spec =
                    serde_json::to_value(spec_for(&format!("app-{}", i % APPS))).expect("spec");
                Entity::new(id(&format!("service/svc-{i}")), spec)
            })
            .collect();
        service_cache.apply(&StreamEvent::Restarted {
            entities: list,
            revision: 1,
        });
        let sandbox_cache = Cache::new();
        let base = sandboxes(1);
        sandbox_cache.apply(&StreamEvent::Restarted {
            entities: base.clone(),
            revision: 1,
        });
        let all_services = service_cache.list();
        let mapper = SandboxEventMapper::new(sandbox_cache, service_cache);
        let mut revision = 1i64;
        group.bench_function(BenchmarkId::new("parse_all_baseline", services), |b| {
            // Baseline: parse every service's spec for each event, then match.
            b.iter(|| {
                let labels = &base[0].spec["labels"];
                all_services
                    .iter()
                    .filter_map(|e| serde_json::from_value::<ServiceSpec>(e.spec.clone()).ok())
                    .filter(|s| {
                        s.selector
                            .iter()
                            .all(|(k, v)| labels[k.as_str()].as_str() == Some(v.as_str()))
                    })
                    .count()
            });
        });
        group.bench_function(BenchmarkId::new("converge", services), |b| {
            b.iter(|| {
                // A relabel between two apps: both services' keys come out.
                revision += 1;
                let mut e = base[0].clone();
                e.spec["labels"]["app"] = json!(format!("app-{}", revision % 2));
                e.revision = revision;
                mapper.map(&StreamEvent::Applied(e))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_compute, bench_mapper);
criterion_main!(benches);
