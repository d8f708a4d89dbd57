//! `converge artifact import|archive`: publish an image tar to the registry as an artifact, or retire one.

use converge_watch::Entity;

use super::{ClientContext, CommandError};
use crate::artifact::{
    ArchiveArgs, ArtifactError, ArtifactImportArgs, ImportRequest, archive_artifact, import_image,
    parse_artifact_id,
};

/// The `artifact` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum ArtifactCommand {
    /// Push an OCI image layout tar (oci-archive) or a `docker save` tar to the registry and
    /// create its `artifact` entity (state `active`).
    Import(ArtifactImportArgs),
    /// Mark an artifact `archived`: its image and blobs become collectable.
    Archive(ArchiveArgs),
}

/// Why an `artifact` verb failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactCommandError {
    /// The entity server could not be used.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The import or archive itself failed; nothing was recorded for a failed import.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

/// Runs one `artifact` verb: prints `artifact/NAME imported (IMAGE@DIGEST)` or
/// `artifact/NAME archived` (or the entity with `-o json|yaml`). The server connection is made
/// (and the token checked) before anything is pushed, so an unreachable server changes nothing.
pub async fn run(cmd: &ArtifactCommand, ctx: &ClientContext) -> Result<(), ArtifactCommandError> {
    let client = ctx.connect().await?;
    match cmd {
        ArtifactCommand::Import(args) => {
            let req = ImportRequest::new(
                args.file.clone(),
                &args.name,
                args.id.as_deref(),
                &args.registry_url,
            )?
            .with_access(&ctx.client_options().map_err(CommandError::from)?);
            let outcome = import_image(&client, &req).await?;
            let line = format!(
                "{} imported ({}@{}; {} blobs pushed, {} already present)\n",
                outcome.entity.id,
                outcome.image,
                outcome.manifest,
                outcome.push.pushed,
                outcome.push.skipped
            );
            print_entity(ctx, &outcome.entity, &line)?;
        }
        ArtifactCommand::Archive(args) => {
            let id = parse_artifact_id(&args.id)?;
            let entity = archive_artifact(&client, &id).await?;
            print_entity(ctx, &entity, &format!("{} archived\n", entity.id))?;
        }
    }
    Ok(())
}

fn print_entity(ctx: &ClientContext, entity: &Entity, line: &str) -> Result<(), CommandError> {
    match ctx.output {
        super::OutputFormat::Table => ctx.print(line),
        super::OutputFormat::Json => ctx.print(&super::render::to_json(entity)?),
        super::OutputFormat::Yaml => ctx.print(&super::render::to_yaml(entity)?),
    }
}
