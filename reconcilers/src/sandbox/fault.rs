//! Test-only fault injection: `CONVERGE_FAULT_AT=<step>[@<n>]` aborts the process the n-th time a sandbox reconcile reaches that step (debug builds only; a no-op in release).
//!
//! Compiled in with `#[cfg(debug_assertions)]` rather than a cargo feature: the binary
//! `cargo test` builds for `env!("CARGO_BIN_EXE_converge")` is a debug build, so the crash
//! tests need no extra flags, and a `--release` build cannot carry the hook by accident
//! (no feature can be left switched on). See `docs/sandbox.md`, "Crash safety".

/// The environment variable naming the step to abort at.
pub const FAULT_ENV: &str = "CONVERGE_FAULT_AT";

/// A named point of sandbox creation or teardown, in the order a reconcile reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultStep {
    /// The sandbox's address is allocated and persisted; nothing of its network exists yet.
    IpAllocated,
    /// The network namespace is pinned; no veth yet.
    NetnsPinned,
    /// veth, address and routes are set up (the whole network).
    NetworkReady,
    /// Every volume directory exists.
    VolumesReady,
    /// A container record was created; its rootfs snapshot not yet prepared.
    RecordCreated,
    /// A container (record and snapshot) was created; its task not yet.
    ContainerCreated,
    /// A task was created but not started.
    TaskCreated,
    /// A task was started.
    TaskStarted,
    /// Every declared port listens; the status is not yet written.
    PortsReady,
    /// The status was written.
    StatusWritten,
    /// Teardown: a container's task was stopped; the task and container not yet deleted.
    TaskKilled,
    /// Teardown: a container's record was deleted; its snapshot not yet removed.
    RecordDeleted,
    /// Teardown: every container of the sandbox is deleted; the network not yet.
    ContainersDeleted,
    /// Teardown: the veth and namespace are removed; the address not yet released.
    NetworkRemoved,
}

impl FaultStep {
    /// Every step, in the order a create-then-delete reaches them.
    pub const ALL: [FaultStep; 14] = [
        FaultStep::IpAllocated,
        FaultStep::NetnsPinned,
        FaultStep::NetworkReady,
        FaultStep::VolumesReady,
        FaultStep::RecordCreated,
        FaultStep::ContainerCreated,
        FaultStep::TaskCreated,
        FaultStep::TaskStarted,
        FaultStep::PortsReady,
        FaultStep::StatusWritten,
        FaultStep::TaskKilled,
        FaultStep::RecordDeleted,
        FaultStep::ContainersDeleted,
        FaultStep::NetworkRemoved,
    ];

    /// The step's name as `CONVERGE_FAULT_AT` takes it.
    pub fn name(self) -> &'static str {
        match self {
            FaultStep::IpAllocated => "ip-allocated",
            FaultStep::NetnsPinned => "netns-pinned",
            FaultStep::NetworkReady => "network-ready",
            FaultStep::VolumesReady => "volumes-ready",
            FaultStep::RecordCreated => "container-record-created",
            FaultStep::ContainerCreated => "container-created",
            FaultStep::TaskCreated => "task-created",
            FaultStep::TaskStarted => "task-started",
            FaultStep::PortsReady => "ports-ready",
            FaultStep::StatusWritten => "status-written",
            FaultStep::TaskKilled => "teardown-task-killed",
            FaultStep::RecordDeleted => "teardown-record-deleted",
            FaultStep::ContainersDeleted => "teardown-containers-deleted",
            FaultStep::NetworkRemoved => "teardown-network-removed",
        }
    }
}

/// What `CONVERGE_FAULT_AT` asks for: a step name and which arrival at it (1-based).
#[cfg(any(debug_assertions, test))]
#[derive(Debug, Clone, PartialEq, Eq)]
struct FaultSpec {
    step: String,
    nth: usize,
}

/// Parses `<step>` or `<step>@<n>` (`n` ≥ 1). `None` for an empty value or a bad count, so
/// a typo never aborts anything.
#[cfg(any(debug_assertions, test))]
fn parse_fault_spec(value: &str) -> Option<FaultSpec> {
    let value = value.trim();
    let (step, nth) = match value.split_once('@') {
        Some((step, n)) => (step, n.parse::<usize>().ok().filter(|n| *n >= 1)?),
        None => (value, 1),
    };
    if step.is_empty() {
        return None;
    }
    Some(FaultSpec {
        step: step.to_string(),
        nth,
    })
}

#[cfg(debug_assertions)]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{FAULT_ENV, FaultSpec, FaultStep, parse_fault_spec};

    static WANTED: OnceLock<Option<FaultSpec>> = OnceLock::new();
    static ARRIVALS: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn fault_point(step: FaultStep) {
        let wanted = WANTED.get_or_init(|| {
            let spec = std::env::var(FAULT_ENV)
                .ok()
                .and_then(|v| parse_fault_spec(&v));
            if let Some(spec) = &spec {
                tracing::warn!(step = %spec.step, nth = spec.nth, "fault injection armed");
            }
            spec
        });
        let Some(wanted) = wanted else {
            return;
        };
        if wanted.step != step.name() {
            return;
        }
        let arrival = ARRIVALS.fetch_add(1, Ordering::SeqCst) + 1;
        if arrival == wanted.nth {
            eprintln!(
                "converge: {FAULT_ENV}={}@{}: aborting at this step",
                wanted.step, wanted.nth
            );
            std::process::abort();
        }
    }
}

/// Marks that reconciliation reached `step`. In a debug build, aborts the process
/// (`std::process::abort`, no unwinding, no cleanup: a crash) when `CONVERGE_FAULT_AT`
/// names this step and this is the requested arrival at it; otherwise does nothing. In a
/// release build it compiles to nothing. Never fails.
#[inline(always)]
pub fn fault_point(step: FaultStep) {
    #[cfg(debug_assertions)]
    armed::fault_point(step);
    #[cfg(not(debug_assertions))]
    let _ = step;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_distinct_and_lowercase() {
        let names: std::collections::BTreeSet<_> =
            FaultStep::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), FaultStep::ALL.len());
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        );
    }

    #[test]
    fn a_fault_spec_names_a_step_and_optionally_which_arrival() {
        assert_eq!(
            parse_fault_spec("task-created"),
            Some(FaultSpec {
                step: "task-created".into(),
                nth: 1
            })
        );
        assert_eq!(
            parse_fault_spec("container-created@2"),
            Some(FaultSpec {
                step: "container-created".into(),
                nth: 2
            })
        );
    }

    #[test]
    fn a_malformed_fault_spec_arms_nothing() {
        for bad in [
            "",
            "@2",
            "task-created@0",
            "task-created@x",
            "task-created@",
        ] {
            assert_eq!(parse_fault_spec(bad), None, "{bad:?}");
        }
    }
}
