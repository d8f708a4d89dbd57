//! `converge describe node`: the last garbage-collection passes the daemon on this node recorded.

use chrono::{DateTime, SecondsFormat, Utc};

use super::super::render::{NONE, to_json, to_yaml};
use super::super::table::{Table, human_age};
use super::super::{ClientContext, CommandError, OutputFormat};
use super::{DescribeArgs, indented};
use crate::daemon::gc::{NodeGcRecord, last_pass_path, read_last_passes};

/// Prints the record in `<data-dir>/gc-last-pass.json` in the context's output format.
/// Fails with `BadTarget` (the whole error chain) when it cannot be read or parsed, and
/// with `NotFound` when no daemon has written one there.
pub(super) fn run(args: &DescribeArgs, ctx: &ClientContext) -> Result<(), CommandError> {
    let path = last_pass_path(&args.data_dir);
    let record = read_last_passes(&path)
        .map_err(|e| CommandError::BadTarget(error_chain(&e)))?
        .ok_or_else(|| {
            CommandError::NotFound(format!(
                "a GC last-pass record at {} (has a daemon with --data-dir {} finished a pass?)",
                path.display(),
                args.data_dir.display()
            ))
        })?;
    let text = match ctx.output {
        OutputFormat::Table => describe_node_record(&record, Utc::now()),
        OutputFormat::Json => to_json(&record)?,
        OutputFormat::Yaml => to_yaml(&record)?,
    };
    ctx.print(&text)
}

/// `e` and each of its sources, joined by `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// The human-readable form of a node's GC record as of `now`: the node, when the record
/// was written, and one row per GC kind with its last pass (`<none>` when none ran).
pub fn describe_node_record(record: &NodeGcRecord, now: DateTime<Utc>) -> String {
    let mut out = format!("{:<10}{}\n", "Node:", record.node);
    out.push_str(&format!(
        "{:<10}{} ({} ago)\n",
        "Updated:",
        record.updated.to_rfc3339_opts(SecondsFormat::Secs, true),
        human_age(record.updated, now)
    ));
    out.push_str("Garbage collection (last pass):\n");
    if record.passes.is_empty() {
        out.push_str(&format!("  {NONE}\n"));
        return out;
    }
    let mut t = Table::new(&[
        "kind", "finished", "took", "deleted", "bytes", "in use", "errors", "mode",
    ]);
    for p in &record.passes {
        let took = (p.finished - p.started).num_milliseconds();
        t.push(vec![
            p.kind.to_string(),
            format!("{} ago", human_age(p.finished, now)),
            format!("{}.{:03}s", took / 1000, took % 1000),
            p.deleted.to_string(),
            p.bytes_freed.to_string(),
            p.kept_in_use.to_string(),
            p.errors.to_string(),
            if p.dry_run { "dry-run" } else { "real" }.to_string(),
        ]);
    }
    out.push_str(&indented(&t.render(), 2));
    out
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    #[test]
    fn a_node_description_lists_the_last_pass_of_each_kind() {
        use converge_reconcilers::gc_report::{GcKind, GcPassReport};
        let now = Utc
            .with_ymd_and_hms(2026, 11, 29, 12, 0, 0)
            .single()
            .expect("time");
        let mut pass = GcPassReport::start(GcKind::Orphans, false).summary;
        pass.started = now - Duration::seconds(62);
        pass.finished = now - Duration::seconds(60);
        pass.deleted = 3;
        pass.bytes_freed = 4096;
        let record = NodeGcRecord {
            node: "n1".into(),
            updated: now - Duration::seconds(60),
            passes: vec![pass],
        };
        let text = describe_node_record(&record, now);
        assert!(text.starts_with("Node:     n1\n"), "{text}");
        assert!(text.contains("Garbage collection (last pass):\n"), "{text}");
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("orphans"))
            .expect("orphans row");
        for want in ["60s ago", "2.000s", "3", "4096", "real"] {
            assert!(row.contains(want), "{want:?} missing in {row:?}");
        }
        let empty = NodeGcRecord {
            passes: Vec::new(),
            ..record
        };
        assert!(describe_node_record(&empty, now).ends_with("  <none>\n"));
    }
}
