//! `converge get [KIND|ID]`: list entities or show one, as a table, JSON or YAML.

use chrono::Utc;
use converge_watch::client::ListFilter;
use converge_watch::{Entity, EntityId, Kind};

use super::render::{entity_table, to_json, to_yaml};
use super::{ClientContext, CommandError, OutputFormat, call};

/// Arguments of `converge get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// A kind (`sandbox`, `artifact`, `service`, or their plurals) or an id such as
    /// `sandbox/web`; all entities when omitted.
    pub target: Option<String>,
}

/// What a `KIND|ID` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every entity.
    All,
    /// Every entity of one kind.
    Kind(Kind),
    /// One entity.
    Id(EntityId),
}

/// Parses a `KIND|ID` argument: an id when it contains `/`, a kind (singular or plural)
/// otherwise. Fails with a message listing the valid kinds.
pub fn parse_target(arg: Option<&str>) -> Result<Target, CommandError> {
    let Some(arg) = arg else {
        return Ok(Target::All);
    };
    if arg.contains('/') {
        return arg
            .parse()
            .map(Target::Id)
            .map_err(|e| CommandError::BadTarget(e.to_string()));
    }
    parse_kind(arg).map(Target::Kind)
}

/// Parses a kind name, also accepting its plural (`sandboxes`, `artifacts`, `services`).
pub fn parse_kind(arg: &str) -> Result<Kind, CommandError> {
    Kind::ALL
        .into_iter()
        .find(|k| arg == k.as_str() || arg == plural(*k))
        .ok_or_else(|| {
            CommandError::BadTarget(format!(
                "unknown kind {arg:?}: expected one of sandbox, artifact, service, or an id such as sandbox/web"
            ))
        })
}

fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Sandbox => "sandboxes",
        Kind::Artifact => "artifacts",
        Kind::Service => "services",
    }
}

/// Runs `get`: prints the entities in the chosen format. An id that does not exist fails
/// with `<id> not found`; an empty list prints nothing on stdout (a note on stderr for tables,
/// `[]` for JSON and YAML).
pub async fn run(args: &GetArgs, ctx: &ClientContext) -> Result<(), CommandError> {
    let target = parse_target(args.target.as_deref())?;
    let client = ctx.connect().await?;
    let (kind, entities, single) = match &target {
        Target::Id(id) => {
            let entity = call(&format!("get {id}"), Some(&id.to_string()), client.get(id))
                .await?
                .ok_or_else(|| CommandError::NotFound(id.to_string()))?;
            (Some(id.kind()), vec![entity], true)
        }
        Target::Kind(kind) => {
            let filter = ListFilter {
                kind: Some(*kind),
                ..ListFilter::default()
            };
            let (entities, _) = call("list entities", None, client.list(&filter)).await?;
            (Some(*kind), entities, false)
        }
        Target::All => {
            let all = ListFilter::default();
            let (entities, _) = call("list entities", None, client.list(&all)).await?;
            (None, entities, false)
        }
    };
    if entities.is_empty() && ctx.output == OutputFormat::Table {
        eprintln!("No entities found.");
        return Ok(());
    }
    ctx.print(&format_entities(ctx.output, kind, &entities, single)?)
}

/// Formats entities for `get`: a table (per-kind columns when `kind` is known), or the
/// contract JSON/YAML: one document when `single`, a list otherwise.
pub fn format_entities(
    output: OutputFormat,
    kind: Option<Kind>,
    entities: &[Entity],
    single: bool,
) -> Result<String, CommandError> {
    Ok(match (output, single, entities) {
        (OutputFormat::Table, _, _) => entity_table(kind, entities, Utc::now()).render(),
        (OutputFormat::Json, true, [one]) => to_json(one)?,
        (OutputFormat::Yaml, true, [one]) => to_yaml(one)?,
        (OutputFormat::Json, _, _) => to_json(entities)?,
        (OutputFormat::Yaml, _, _) => to_yaml(entities)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_ids_kinds_plurals_or_nothing() {
        assert_eq!(parse_target(None).expect("all"), Target::All);
        assert_eq!(
            parse_target(Some("sandbox")).expect("kind"),
            Target::Kind(Kind::Sandbox)
        );
        assert_eq!(
            parse_target(Some("services")).expect("plural"),
            Target::Kind(Kind::Service)
        );
        assert_eq!(
            parse_target(Some("artifact/demo")).expect("id"),
            Target::Id("artifact/demo".parse().expect("id"))
        );
    }

    #[test]
    fn unknown_kinds_and_bad_ids_are_clear_errors() {
        let e = parse_target(Some("pods")).expect_err("unknown");
        assert!(e.to_string().contains("unknown kind \"pods\""), "{e}");
        let e = parse_target(Some("sandbox/Bad_Name")).expect_err("bad name");
        assert!(e.to_string().contains("invalid name"), "{e}");
        let e = parse_target(Some("pod/x")).expect_err("bad kind");
        assert!(e.to_string().contains("unknown kind"), "{e}");
    }

    #[test]
    fn one_entity_prints_as_an_object_and_lists_as_arrays() {
        let e = Entity::new(
            "sandbox/a".parse().expect("id"),
            serde_json::json!({"x": 1}),
        );
        let one = format_entities(OutputFormat::Json, None, std::slice::from_ref(&e), true)
            .expect("json");
        assert!(one.starts_with('{'), "{one}");
        let list = format_entities(OutputFormat::Json, None, std::slice::from_ref(&e), false)
            .expect("json");
        assert!(list.starts_with('['), "{list}");
        let yaml = format_entities(OutputFormat::Yaml, None, &[e], true).expect("yaml");
        assert!(yaml.starts_with("id: sandbox/a\n"), "{yaml}");
        let empty = format_entities(OutputFormat::Yaml, None, &[], false).expect("yaml");
        assert_eq!(empty, "[]\n");
    }
}
