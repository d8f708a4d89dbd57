//! `converge apply -f FILE|-`: create or update entities atomically, all or none.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use converge_watch::client::{ClientError, EntityClient, PutSpec};
use converge_watch::{Backoff, BackoffConfig, Entity, EntityId, Jitter};

use super::input::{ApplyItem, parse_items, read_input};
use super::render::{to_json, to_yaml};
use super::{ClientContext, CommandError, OutputFormat, call, call_error, timed};

/// How often an apply re-reads and retries when entities change between its read and its write.
const MAX_ATTEMPTS: u32 = 6;

/// Delays between those retries: short, randomised so that racing applies spread out.
fn retry_backoff() -> Backoff {
    Backoff::new(BackoffConfig {
        base: Duration::from_millis(25),
        max: Duration::from_millis(800),
        jitter: Jitter::Full,
        ..BackoffConfig::default()
    })
}

/// Arguments of `converge apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// File to read (JSON or YAML; one entity, a list or a `---` stream), `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
}

/// What applying one item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// Its spec changed.
    Configured,
    /// Its spec was already the one given.
    Unchanged,
}

impl Outcome {
    /// The word kubectl prints for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }

    /// Compares what was stored before with what is being applied.
    pub fn of(previous: Option<&Entity>, item: &ApplyItem) -> Outcome {
        match previous {
            None => Outcome::Created,
            Some(p) if p.spec == item.spec => Outcome::Unchanged,
            Some(_) => Outcome::Configured,
        }
    }
}

/// Runs `apply`: reads and validates every item locally, then stores them with one atomic
/// batch that is conditional on the revisions just read, so concurrent changes are never
/// overwritten blindly (the read and write are retried a few times if they collide).
/// Prints `<id> created|configured|unchanged` per item, or the stored entities with
/// `-o json|yaml`. On any failure nothing is applied and nothing is printed on stdout.
pub async fn run(args: &ApplyArgs, ctx: &ClientContext) -> Result<(), CommandError> {
    let text = read_input(&args.file)?;
    let items = parse_items(&text)?;
    let client = ctx.connect().await?;
    let mut attempt = 0;
    let mut backoff = retry_backoff();
    let (outcomes, stored) = loop {
        attempt += 1;
        let previous = read_current(&client, &items).await?;
        let puts = items
            .iter()
            .zip(&previous)
            .map(|(item, prev)| PutSpec {
                id: item.id.clone(),
                spec: item.spec.clone(),
                expected_revision: Some(prev.as_ref().map_or(0, |e| e.revision)),
            })
            .collect();
        match timed("apply", client.put_batch(puts)).await? {
            Ok(stored) => {
                let outcomes: Vec<Outcome> = items
                    .iter()
                    .zip(&previous)
                    .map(|(item, prev)| Outcome::of(prev.as_ref(), item))
                    .collect();
                break (outcomes, stored);
            }
            Err(ClientError::Conflict { id, message, .. }) => {
                tracing::debug!(%id, attempt, "apply collided with a concurrent change");
                if attempt >= MAX_ATTEMPTS {
                    let what = if id.is_empty() {
                        "the entities"
                    } else {
                        id.as_str()
                    };
                    return Err(CommandError::Contended(format!(
                        "{what} kept changing while being applied ({message}); nothing was applied, try again"
                    )));
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(call_error("apply", None, e)),
        }
    };
    for (item, outcome) in items.iter().zip(&outcomes) {
        tracing::debug!(id = %item.id, outcome = outcome.as_str(), "applied");
    }
    let text = match ctx.output {
        OutputFormat::Table => summary(&items, &outcomes),
        OutputFormat::Json => to_json(&in_input_order(&items, stored))?,
        OutputFormat::Yaml => to_yaml(&in_input_order(&items, stored))?,
    };
    ctx.print(&text)
}

async fn read_current(
    client: &EntityClient,
    items: &[ApplyItem],
) -> Result<Vec<Option<Entity>>, CommandError> {
    let mut previous = Vec::with_capacity(items.len());
    for item in items {
        let id = item.id.to_string();
        let current = call(&format!("get {id}"), None, client.get(&item.id)).await?;
        previous.push(current);
    }
    Ok(previous)
}

/// One kubectl-style line per item, in input order: `sandbox/web created`.
pub fn summary(items: &[ApplyItem], outcomes: &[Outcome]) -> String {
    items
        .iter()
        .zip(outcomes)
        .map(|(item, outcome)| format!("{} {}\n", item.id, outcome.as_str()))
        .collect()
}

fn in_input_order(items: &[ApplyItem], stored: Vec<Entity>) -> Vec<Entity> {
    let mut by_id: HashMap<EntityId, Entity> =
        stored.into_iter().map(|e| (e.id.clone(), e)).collect();
    items.iter().filter_map(|i| by_id.remove(&i.id)).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn item(id: &str, spec: serde_json::Value) -> ApplyItem {
        ApplyItem {
            index: 1,
            id: id.parse().expect("id"),
            spec,
        }
    }

    #[test]
    fn outcomes_compare_the_stored_spec_with_the_applied_one() {
        let it = item("sandbox/a", json!({"x": 1}));
        let mut stored = Entity::new(it.id.clone(), json!({"x": 1}));
        assert_eq!(Outcome::of(None, &it), Outcome::Created);
        assert_eq!(Outcome::of(Some(&stored), &it), Outcome::Unchanged);
        stored.spec = json!({"x": 2});
        assert_eq!(Outcome::of(Some(&stored), &it), Outcome::Configured);
    }

    #[test]
    fn the_summary_has_one_kubectl_style_line_per_item() {
        let items = [
            item("sandbox/web", json!({})),
            item("service/web", json!({})),
        ];
        let text = summary(&items, &[Outcome::Created, Outcome::Unchanged]);
        assert_eq!(text, "sandbox/web created\nservice/web unchanged\n");
    }
}
