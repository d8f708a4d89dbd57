//! The mark-and-sweep pass: mark from active artifacts, images in use, linked manifests and young manifests; sweep unmarked blobs past their grace, re-checking each right before deletion.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use converge_watch::Kind;
use converge_watch::spec::{ArtifactSpec, ArtifactState};

use super::{
    BlobDeleted, BlobDeletion, BlobDigest, BlobEntry, BlobGcDeps, BlobGcError, ReachError,
};
use crate::engine::{BoxError, Executor, PlannedAction, Verb};
use crate::gc_report::{GcKind, GcPassReport};

/// Young blobs up to this size are tried as manifests (a push in progress may reference
/// old layers before its artifact exists).
const MAX_YOUNG_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Blobs deleted per [`BlobStore::delete_blobs`](super::BlobStore::delete_blobs) call: the
/// store scans repository links and fsyncs directories once per batch, and a fenced store
/// confirms its leader term once per batch.
pub const SWEEP_BATCH: usize = 256;

/// The roots of one mark phase.
#[derive(Debug, Default)]
struct Roots {
    /// Manifests of non-archived artifacts.
    active: BTreeSet<BlobDigest>,
    /// Manifests archived artifacts name (some may also be active roots).
    archived: BTreeSet<BlobDigest>,
    /// Why some reachability is unknown (then nothing is swept).
    unknown: Vec<String>,
}

/// Runs mark-and-sweep passes over one store. Holds no state between passes: safety
/// comes from the marks and the mtime grace, not from memory.
#[derive(Debug)]
pub struct BlobCollector {
    deps: BlobGcDeps,
}

impl BlobCollector {
    /// A collector over `deps.store`.
    pub fn new(deps: BlobGcDeps) -> Self {
        Self { deps }
    }

    /// One pass, with the registry running.
    ///
    /// Marked (kept): everything reachable from the manifest of every non-archived artifact,
    /// of every image a container on this node uses, of every manifest linked into a
    /// repository unless only archived artifacts name it, and of every blob younger than
    /// `blob_grace` that parses as a manifest. Swept: unmarked blobs whose mtime is older
    /// than `blob_grace`, after re-reading artifacts (new roots are marked) and re-checking
    /// the blob's mtime right before deleting it; deleting a manifest also removes the
    /// repository links and tags pointing at it. In-progress uploads are never looked at.
    /// When any root's reachability is unknown (a manifest that does not parse, an artifact
    /// spec without a valid digest, images in use or links unreadable) nothing is swept and
    /// the report says why. Entries of the blob directory whose name is not 64 hex digits,
    /// or that are not regular files, are ignored and reported. Fails only when artifacts or
    /// the blob directory cannot be listed.
    pub async fn pass(&self, exec: &Executor) -> Result<GcPassReport, BlobGcError> {
        let mut report = GcPassReport::start(GcKind::Blobs, exec.is_dry_run());
        let grace = self.deps.config.blob_grace;
        let mut roots = self.roots().await?;
        let mut marked = BTreeSet::new();
        let active = roots.active.clone();
        self.mark(&active, &mut marked, &mut roots.unknown).await;
        let entries = self
            .deps
            .store
            .list_blob_entries()
            .await
            .map_err(BlobGcError::ListBlobs)?;
        let now = SystemTime::now();
        let mut candidates: Vec<(BlobDigest, BlobEntry)> = Vec::new();
        for entry in entries {
            let digest = match BlobDigest::from_hex(&entry.name) {
                Ok(d) => d,
                Err(_) => {
                    report.problem(format!(
                        "ignored {:?} in blobs/sha256: not a 64-hex-digit sha256 name",
                        entry.name
                    ));
                    continue;
                }
            };
            if !entry.regular_file {
                report.problem(format!("ignored blob/{digest}: not a regular file"));
                continue;
            }
            if age(now, entry.modified) < grace {
                if entry.size <= MAX_YOUNG_MANIFEST_BYTES
                    && !marked.contains(&digest)
                    && let Ok(set) = self.deps.store.reachable_from(&digest).await
                {
                    marked.extend(set);
                }
                report.keep(
                    format!("blob/{digest}"),
                    format!("younger than blob grace {grace:?}"),
                );
                continue;
            }
            candidates.push((digest, entry));
        }
        for digest in &roots.archived {
            if marked.contains(digest) {
                report.keep_in_use(
                    format!("blob/{digest}"),
                    "manifest of an archived artifact, still reachable from something live",
                );
            }
        }
        if !roots.unknown.is_empty() {
            for why in &roots.unknown {
                report.problem(format!("nothing swept this pass: {why}"));
            }
            report.finish();
            return Ok(report);
        }
        // Confirm: artifacts created while we listed protect their blobs too.
        match self.roots().await {
            Ok(again) => {
                let fresh: BTreeSet<BlobDigest> =
                    again.active.difference(&active).cloned().collect();
                let mut unknown = again.unknown;
                self.mark(&fresh, &mut marked, &mut unknown).await;
                if !unknown.is_empty() {
                    for why in unknown {
                        report.problem(format!("nothing swept this pass: {why}"));
                    }
                    report.finish();
                    return Ok(report);
                }
            }
            Err(e) => {
                report.problem(format!(
                    "nothing swept this pass: re-reading artifacts: {e}"
                ));
                report.finish();
                return Ok(report);
            }
        }
        let unmarked: Vec<(BlobDigest, BlobEntry)> = candidates
            .into_iter()
            .filter(|(digest, _)| !marked.contains(digest))
            .collect();
        for batch in unmarked.chunks(SWEEP_BATCH) {
            self.sweep_batch(&mut report, exec, batch, grace).await;
        }
        report.finish();
        Ok(report)
    }

    /// Re-checks each candidate's mtime, then deletes those still unmodified with one
    /// [`BlobStore::delete_blobs`](super::BlobStore::delete_blobs) call (which re-checks the
    /// mtime once more right before removing each blob). Dry-run: plans them instead.
    async fn sweep_batch(
        &self,
        report: &mut GcPassReport,
        exec: &Executor,
        batch: &[(BlobDigest, BlobEntry)],
        grace: Duration,
    ) {
        let mut chosen: Vec<(BlobDeletion, PlannedAction, u64)> = Vec::with_capacity(batch.len());
        for (digest, entry) in batch {
            let target = format!("blob/{digest}");
            let modified = match self.deps.store.blob_modified(digest).await {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    report.problem(format!("re-checking {target}: {e}"));
                    continue;
                }
            };
            let idle = age(SystemTime::now(), modified);
            if modified != entry.modified || idle < grace {
                report.keep(target, "modified during the pass");
                continue;
            }
            let action = PlannedAction::new(
                Verb::Delete,
                &target,
                format!(
                    "unreachable from active artifacts, linked manifests and images in use; unmodified for {}s",
                    idle.as_secs()
                ),
            )
            .with_bytes(entry.size);
            let deletion = BlobDeletion {
                digest: digest.clone(),
                modified,
            };
            chosen.push((deletion, action, entry.size));
        }
        if chosen.is_empty() {
            return;
        }
        let outcomes: Vec<Result<BlobDeleted, BoxError>> = if exec.is_dry_run() {
            chosen.iter().map(|_| Ok(BlobDeleted::Deleted)).collect()
        } else {
            let deletions: Vec<BlobDeletion> = chosen.iter().map(|(d, _, _)| d.clone()).collect();
            self.deps.store.delete_blobs(&deletions).await
        };
        let mut outcomes = outcomes.into_iter();
        for (deletion, action, size) in chosen {
            let target = action.target.clone();
            let outcome = outcomes.next().unwrap_or_else(|| {
                Err(format!("the store returned no outcome for {target}").into())
            });
            match outcome {
                Ok(BlobDeleted::Deleted) => {
                    // Real mode: logs the deletion that just happened; dry-run: plans it.
                    let logged: Result<Option<()>, BoxError> = exec
                        .perform(action.clone(), std::future::ready(Ok(())))
                        .await;
                    if logged.is_ok() {
                        report.summary.deleted += 1;
                        report.summary.bytes_freed += size;
                        report.plan.push(action);
                    }
                }
                Ok(BlobDeleted::Gone) => {}
                Ok(BlobDeleted::Modified) => report.keep(target, "modified during the pass"),
                Err(e) => report.problem(format!("deleting blob/{}: {e}", deletion.digest)),
            }
        }
    }

    /// The roots: active artifacts' manifests plus images in use plus linked manifests not
    /// claimed only by archived artifacts (all in `active`), and archived-only manifests.
    async fn roots(&self) -> Result<Roots, BlobGcError> {
        let mut roots = Roots::default();
        let artifacts = self
            .deps
            .entities
            .list(Kind::Artifact)
            .await
            .map_err(BlobGcError::Artifacts)?;
        let mut archived = BTreeSet::new();
        for entity in artifacts {
            let spec = match serde_json::from_value::<ArtifactSpec>(entity.spec.clone()) {
                Ok(s) => s,
                Err(e) => {
                    roots.unknown.push(format!(
                        "artifact {} has an unreadable spec: {e}",
                        entity.id
                    ));
                    continue;
                }
            };
            match (spec.manifest.parse::<BlobDigest>(), spec.state) {
                (Ok(d), ArtifactState::Active) => {
                    roots.active.insert(d);
                }
                (Ok(d), ArtifactState::Archived) => {
                    archived.insert(d);
                }
                (Err(e), ArtifactState::Active) => {
                    roots.unknown.push(format!("artifact {}: {e}", entity.id));
                }
                (Err(_), ArtifactState::Archived) => {}
            }
        }
        if let Some(in_use) = &self.deps.in_use {
            match in_use.manifests_in_use().await {
                Ok(list) => {
                    for d in list {
                        match d.parse::<BlobDigest>() {
                            Ok(d) => {
                                roots.active.insert(d);
                            }
                            Err(e) => roots.unknown.push(format!("image in use: {e}")),
                        }
                    }
                }
                Err(e) => roots.unknown.push(format!("images in use unreadable: {e}")),
            }
        }
        match self.deps.store.linked_manifests().await {
            Ok(linked) => {
                for d in linked {
                    if !archived.contains(&d) {
                        roots.active.insert(d);
                    }
                }
            }
            Err(e) => roots
                .unknown
                .push(format!("repository links unreadable: {e}")),
        }
        roots.archived = archived;
        Ok(roots)
    }

    /// Adds everything reachable from `roots` to `marked`; unknown reachability goes to `unknown`.
    async fn mark(
        &self,
        roots: &BTreeSet<BlobDigest>,
        marked: &mut BTreeSet<BlobDigest>,
        unknown: &mut Vec<String>,
    ) {
        for root in roots {
            marked.insert(root.clone());
            match self.deps.store.reachable_from(root).await {
                Ok(set) => marked.extend(set),
                Err(e @ ReachError::Unparsable { .. }) => {
                    unknown.push(format!("{e}: {}", source_chain(&e)));
                }
                Err(e) => unknown.push(format!("{e}: {}", source_chain(&e))),
            }
        }
    }
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}
