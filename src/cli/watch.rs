//! `converge watch [KIND]`: follow changes, one line per change, until Ctrl-C.

use std::collections::HashMap;

use converge_watch::client::ListFilter;
use converge_watch::stream::{StreamConfig, watch_stream};
use converge_watch::{Entity, EntityId, StreamEvent};
use futures::StreamExt;
use serde::Serialize;

use super::get::parse_kind;
use super::render::{RenderError, short_state, to_yaml};
use super::{ClientContext, CommandError, OutputFormat};

/// Arguments of `converge watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Only this kind (`sandbox`, `artifact`, `service`); every kind when omitted.
    pub kind: Option<String>,
}

/// One printed change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchLine {
    /// `PUT` or `DELETE`.
    #[serde(rename = "type")]
    pub op: &'static str,
    /// Store revision of the change.
    pub revision: i64,
    /// The entity after a put, or its last state before a delete.
    pub entity: Entity,
}

impl WatchLine {
    fn put(entity: Entity) -> Self {
        Self {
            op: "PUT",
            revision: entity.revision,
            entity,
        }
    }

    fn delete(entity: Entity, revision: i64) -> Self {
        Self {
            op: "DELETE",
            revision,
            entity,
        }
    }

    /// The line as printed: `REVISION  PUT|DELETE  ID  PHASE/STATE` for tables, one JSON
    /// object per line for JSON, one `---` document per change for YAML.
    pub fn format(&self, output: OutputFormat) -> Result<String, RenderError> {
        Ok(match output {
            OutputFormat::Table => format!(
                "{}  {}  {}  {}\n",
                self.revision,
                self.op,
                self.entity.id,
                short_state(&self.entity)
            ),
            OutputFormat::Json => {
                let mut line = serde_json::to_string(self).map_err(RenderError::Json)?;
                line.push('\n');
                line
            }
            OutputFormat::Yaml => format!("---\n{}", to_yaml(self)?),
        })
    }
}

/// Turns stream events into printed changes, remembering what it has shown so that a
/// relist after compaction prints only what changed, and deletions it implies.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    known: HashMap<EntityId, Entity>,
}

impl ChangeTracker {
    /// The lines one event produces. The first list prints every entity as a `PUT`
    /// (the state the watch starts from), like `kubectl get -w`.
    pub fn lines(&mut self, event: StreamEvent) -> Vec<WatchLine> {
        match event {
            StreamEvent::Applied(entity) => {
                self.known.insert(entity.id.clone(), entity.clone());
                vec![WatchLine::put(entity)]
            }
            StreamEvent::Deleted { entity, revision } => {
                self.known.remove(&entity.id);
                vec![WatchLine::delete(entity, revision)]
            }
            StreamEvent::Restarted { entities, revision } => {
                let mut lines = Vec::new();
                let mut previous = std::mem::take(&mut self.known);
                for entity in entities {
                    let changed = previous
                        .remove(&entity.id)
                        .is_none_or(|p| p.revision != entity.revision);
                    if changed {
                        lines.push(WatchLine::put(entity.clone()));
                    }
                    self.known.insert(entity.id.clone(), entity);
                }
                let mut gone: Vec<Entity> = previous.into_values().collect();
                gone.sort_by(|a, b| a.id.cmp(&b.id));
                lines.extend(gone.into_iter().map(|e| WatchLine::delete(e, revision)));
                lines
            }
        }
    }
}

/// Runs `watch`: prints each change as it happens until Ctrl-C (exit 0). Reconnects by
/// itself when the server restarts, resuming where it left off. Fails only when the server
/// cannot be reached at the start, the kind is unknown, or stdout is closed.
pub async fn run(args: &WatchArgs, ctx: &ClientContext) -> Result<(), CommandError> {
    let kind = args.kind.as_deref().map(parse_kind).transpose()?;
    let client = ctx.connect().await?;
    let filter = ListFilter {
        kind,
        ..ListFilter::default()
    };
    let stream = watch_stream(client, filter, StreamConfig::default());
    let mut stream = std::pin::pin!(stream);
    let mut tracker = ChangeTracker::default();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            event = stream.next() => {
                let Some(event) = event else { return Ok(()) };
                let mut text = String::new();
                for line in tracker.lines(event) {
                    text.push_str(&line.format(ctx.output)?);
                }
                if !text.is_empty() {
                    ctx.print(&text)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entity(id: &str, revision: i64, status: serde_json::Value) -> Entity {
        let mut e = Entity::new(id.parse().expect("id"), json!({}));
        e.revision = revision;
        e.status = status;
        e
    }

    fn texts(lines: &[WatchLine]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.format(OutputFormat::Table).expect("format"))
            .collect()
    }

    #[test]
    fn puts_and_deletes_print_revision_type_id_and_state() {
        let mut t = ChangeTracker::default();
        let put = t.lines(StreamEvent::Applied(entity(
            "sandbox/a",
            5,
            json!({"phase": "running"}),
        )));
        assert_eq!(texts(&put), ["5  PUT  sandbox/a  running\n"]);
        let del = t.lines(StreamEvent::Deleted {
            entity: entity("sandbox/a", 5, json!({})),
            revision: 6,
        });
        assert_eq!(texts(&del), ["6  DELETE  sandbox/a  -\n"]);
    }

    #[test]
    fn a_relist_prints_only_changes_and_implied_deletions() {
        let mut t = ChangeTracker::default();
        let first = t.lines(StreamEvent::Restarted {
            entities: vec![
                entity("sandbox/a", 1, json!({})),
                entity("sandbox/b", 2, json!({})),
            ],
            revision: 2,
        });
        assert_eq!(first.len(), 2, "the initial list is shown");
        let again = t.lines(StreamEvent::Restarted {
            entities: vec![
                entity("sandbox/a", 1, json!({})),
                entity("sandbox/c", 9, json!({})),
            ],
            revision: 10,
        });
        assert_eq!(
            texts(&again),
            ["9  PUT  sandbox/c  -\n", "10  DELETE  sandbox/b  -\n"]
        );
    }

    #[test]
    fn json_lines_carry_the_type_revision_and_entity() {
        let line = WatchLine::put(entity("artifact/x", 3, json!({})));
        let text = line.format(OutputFormat::Json).expect("json");
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(
            (v["type"].as_str(), v["revision"].as_i64()),
            (Some("PUT"), Some(3))
        );
        assert_eq!(v["entity"]["id"], "artifact/x");
    }
}
