//! The image pass: archived-artifact images, unknown images past their max age, and least-recently-used eviction under disk pressure, never touching an image any container uses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use converge_watch::Kind;
use converge_watch::spec::{ArtifactSpec, ArtifactState};
use tokio::time::Instant;

use super::disk::DiskUsage;
use super::sizes::{ContentRefs, image_blobs};
use super::{ImageGcConfig, ImageGcError};
use crate::containerd::{ContainerdClient, ImageRecord};
use crate::engine::{Executor, PlannedAction, Verb};
use crate::gc_report::{EntitySource, GcKind, GcPassReport};

/// What artifacts say about one image name.
#[derive(Debug, Clone, Copy, Default)]
struct ArtifactView {
    active: bool,
    archived: bool,
}

#[derive(Debug, Default)]
struct Times {
    first_seen: HashMap<String, Instant>,
    last_used: HashMap<String, Instant>,
}

/// Collects images; remembers (in memory) when each image was first seen and last used by
/// a container. After a restart every image counts as new and just used (the safe
/// direction: nothing looks older than it is).
pub struct ImageCollector {
    client: ContainerdClient,
    entities: Arc<dyn EntitySource>,
    disk: Arc<dyn DiskUsage>,
    config: ImageGcConfig,
    times: Mutex<Times>,
}

impl std::fmt::Debug for ImageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCollector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ImageCollector {
    /// A collector for `client`'s namespace, reading artifacts from `entities` and disk
    /// usage from `disk` (containerd's root filesystem in production).
    pub fn new(
        client: ContainerdClient,
        entities: Arc<dyn EntitySource>,
        disk: Arc<dyn DiskUsage>,
        config: ImageGcConfig,
    ) -> Self {
        Self {
            client,
            entities,
            disk,
            config,
            times: Mutex::default(),
        }
    }

    /// One pass at the current time; see [`ImageCollector::pass_at`].
    pub async fn pass(&self, exec: &Executor) -> Result<GcPassReport, ImageGcError> {
        self.pass_at(Instant::now(), exec).await
    }

    /// One pass as if the time were `now` (tests inject the clock here).
    ///
    /// An image used by any container (running or not) is never removed. Otherwise an
    /// image is removed when every artifact naming it (`spec.image`) is archived; when no
    /// artifact names it and `unknown_image_max_age` is set and passed since first sight;
    /// and, while the disk is at or above `disk_high`, least recently used first (once
    /// older than `min_age`) until the projected usage is below `disk_low`. After real
    /// deletions containerd's GC runs so the bytes are actually freed. Fails only when
    /// containerd cannot be listed; when artifacts cannot be read, only pressure eviction
    /// runs.
    pub async fn pass_at(
        &self,
        now: Instant,
        exec: &Executor,
    ) -> Result<GcPassReport, ImageGcError> {
        let mut report = GcPassReport::start(GcKind::Images, exec.is_dry_run());
        let containers = self
            .client
            .list_containers(&[])
            .await
            .map_err(ImageGcError::ListContainers)?;
        let images = self
            .client
            .list_images(&[])
            .await
            .map_err(ImageGcError::ListImages)?;
        let mut users: HashMap<&str, Vec<&str>> = HashMap::new();
        for c in &containers {
            users
                .entry(c.image.as_str())
                .or_default()
                .push(c.id.as_str());
        }
        let artifacts = match self.artifact_views().await {
            Ok(a) => Some(a),
            Err(e) => {
                report.problem(format!(
                    "artifacts unreadable, only disk-pressure eviction runs: {e}"
                ));
                None
            }
        };
        let (first_seen, last_used) = self.observe(&images, &users, now);
        let mut refs = ContentRefs::default();
        for image in &images {
            match image_blobs(&self.client, &image.target).await {
                Ok(blobs) => refs.add(&image.name, blobs),
                Err(e) => report.problem(format!("sizing image/{}: {e}", image.name)),
            }
        }
        let mut gone: HashSet<String> = HashSet::new();
        for image in &images {
            let target = format!("image/{}", image.name);
            let view = artifacts
                .as_ref()
                .map(|a| a.get(&image.name).copied().unwrap_or_default());
            if let Some(ids) = users.get(image.name.as_str()) {
                if view.is_some_and(|v| v.archived && !v.active) {
                    report.keep_in_use(
                        &target,
                        format!("artifact archived but used by container {}", ids.join(", ")),
                    );
                }
                continue;
            }
            let Some(view) = view else { continue };
            let age =
                now.saturating_duration_since(first_seen.get(&image.name).copied().unwrap_or(now));
            let reason = if view.archived && !view.active {
                "its artifact is archived".to_string()
            } else if view.active || view.archived {
                continue;
            } else {
                match self.config.unknown_image_max_age {
                    Some(max) if age >= max => {
                        format!(
                            "no artifact names it and it was first seen {age:?} ago (max {max:?})"
                        )
                    }
                    _ => continue,
                }
            };
            if self
                .delete(&mut report, &mut refs, exec, &target, &image.name, reason)
                .await
            {
                gone.insert(image.name.clone());
            }
        }
        self.evict_under_pressure(
            &mut report,
            &mut refs,
            exec,
            &images,
            &users,
            &gone,
            &first_seen,
            &last_used,
            now,
        )
        .await;
        if report.summary.deleted > 0
            && !exec.is_dry_run()
            && let Err(e) = self.client.collect_garbage().await
        {
            report.problem(format!("containerd garbage collection: {e}"));
        }
        report.finish();
        Ok(report)
    }

    /// Deletes one image through `exec` after confirming no container uses it now; true
    /// when it is (or would be) gone.
    async fn delete(
        &self,
        report: &mut GcPassReport,
        refs: &mut ContentRefs,
        exec: &Executor,
        target: &str,
        name: &str,
        reason: String,
    ) -> bool {
        // Confirm right before deleting: a container created since the pass listed them
        // makes the image live again.
        match self.client.list_containers(&[]).await {
            Ok(cs) => {
                if let Some(c) = cs.iter().find(|c| c.image == name) {
                    report.keep_in_use(
                        target,
                        format!("container {} started using it during the pass", c.id),
                    );
                    return false;
                }
            }
            Err(e) => {
                report.problem(format!("re-checking use of {target}, kept: {e}"));
                return false;
            }
        }
        let bytes = refs.freed_by(name);
        let action = PlannedAction::new(Verb::Delete, target, reason).with_bytes(bytes);
        match exec
            .perform(action.clone(), self.client.delete_image(name))
            .await
        {
            Ok(_) => {
                refs.remove(name);
                report.summary.deleted += 1;
                report.summary.bytes_freed += bytes;
                report.plan.push(action);
                true
            }
            Err(e) => {
                report.problem(format!("deleting {target}: {e}"));
                false
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn evict_under_pressure(
        &self,
        report: &mut GcPassReport,
        refs: &mut ContentRefs,
        exec: &Executor,
        images: &[ImageRecord],
        users: &HashMap<&str, Vec<&str>>,
        gone: &HashSet<String>,
        first_seen: &HashMap<String, Instant>,
        last_used: &HashMap<String, Instant>,
        now: Instant,
    ) {
        let stats = match self.disk.usage() {
            Ok(s) => s,
            Err(e) => {
                report.problem(format!("disk usage unreadable, no eviction: {e}"));
                return;
            }
        };
        if stats.used_percent() < self.config.disk_high {
            return;
        }
        let low = stats.bytes_at_percent(self.config.disk_low);
        let mut projected = stats.used_bytes.saturating_sub(report.summary.bytes_freed);
        tracing::info!(
            used_percent = stats.used_percent(),
            high = self.config.disk_high,
            low = self.config.disk_low,
            "disk pressure: evicting unused images"
        );
        let mut candidates: Vec<&ImageRecord> = Vec::new();
        for image in images.iter().filter(|i| !gone.contains(&i.name)) {
            let target = format!("image/{}", image.name);
            if let Some(ids) = users.get(image.name.as_str()) {
                report.keep_in_use(
                    &target,
                    format!("disk pressure, but used by container {}", ids.join(", ")),
                );
                continue;
            }
            let age =
                now.saturating_duration_since(first_seen.get(&image.name).copied().unwrap_or(now));
            if age < self.config.min_age {
                report.keep(
                    &target,
                    format!(
                        "disk pressure, but younger than min age {:?}",
                        self.config.min_age
                    ),
                );
                continue;
            }
            candidates.push(image);
        }
        // Oldest last use first; the name breaks ties so the order is stable.
        candidates.sort_by(|a, b| {
            let at = |n: &String| last_used.get(n).copied().unwrap_or(now);
            at(&a.name)
                .cmp(&at(&b.name))
                .then_with(|| a.name.cmp(&b.name))
        });
        for image in candidates {
            if projected < low {
                break;
            }
            let target = format!("image/{}", image.name);
            let before = refs.freed_by(&image.name);
            let reason = format!(
                "disk at {:.1}% (high {}%), least recently used, evicting down to {}%",
                stats.used_percent(),
                self.config.disk_high,
                self.config.disk_low
            );
            if !self
                .delete(report, refs, exec, &target, &image.name, reason)
                .await
            {
                continue;
            }
            projected = projected.saturating_sub(before);
            if !exec.is_dry_run() {
                if let Err(e) = self.client.collect_garbage().await {
                    report.problem(format!("containerd garbage collection: {e}"));
                } else if let Ok(measured) = self.disk.usage() {
                    projected = projected.min(measured.used_bytes);
                }
            }
        }
        if projected >= low {
            report.problem(format!(
                "disk still at or above {}% after evicting every eligible image",
                self.config.disk_low
            ));
        }
    }

    /// Image name to what artifacts say about it; an unparsable artifact spec with an
    /// `image` string counts as active (keeps the image).
    async fn artifact_views(
        &self,
    ) -> Result<HashMap<String, ArtifactView>, crate::engine::BoxError> {
        let mut out: HashMap<String, ArtifactView> = HashMap::new();
        for entity in self.entities.list(Kind::Artifact).await? {
            match serde_json::from_value::<ArtifactSpec>(entity.spec.clone()) {
                Ok(spec) => {
                    let v = out.entry(spec.image).or_default();
                    match spec.state {
                        ArtifactState::Active => v.active = true,
                        ArtifactState::Archived => v.archived = true,
                    }
                }
                Err(_) => {
                    if let Some(image) = entity.spec.get("image").and_then(|v| v.as_str()) {
                        out.entry(image.to_string()).or_default().active = true;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Updates first-seen and last-used times and returns copies for this pass; forgets
    /// images that no longer exist.
    fn observe(
        &self,
        images: &[ImageRecord],
        users: &HashMap<&str, Vec<&str>>,
        now: Instant,
    ) -> (HashMap<String, Instant>, HashMap<String, Instant>) {
        let mut t = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        let present: HashSet<&str> = images.iter().map(|i| i.name.as_str()).collect();
        t.first_seen.retain(|k, _| present.contains(k.as_str()));
        t.last_used.retain(|k, _| present.contains(k.as_str()));
        for image in images {
            let first = *t.first_seen.entry(image.name.clone()).or_insert(now);
            if users.contains_key(image.name.as_str()) {
                t.last_used.insert(image.name.clone(), now);
            } else {
                t.last_used.entry(image.name.clone()).or_insert(first);
            }
        }
        (t.first_seen.clone(), t.last_used.clone())
    }

    /// Last-use times known so far, by image name (for `describe` and tests).
    pub fn last_used(&self) -> BTreeMap<String, Instant> {
        let t = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        t.last_used.clone().into_iter().collect()
    }
}
