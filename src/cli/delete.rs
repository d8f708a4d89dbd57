//! `converge delete ID`: remove one entity.

use converge_watch::EntityId;

use super::{ClientContext, CommandError, call};

/// Arguments of `converge delete`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// The entity to delete, such as `sandbox/web`.
    pub id: String,
}

/// Runs `delete`: prints `<id> deleted`. Fails with `<id> not found` when it does not exist,
/// and with a clear message when the id is malformed (nothing is sent then).
pub async fn run(args: &DeleteArgs, ctx: &ClientContext) -> Result<(), CommandError> {
    let id: EntityId = args
        .id
        .parse()
        .map_err(|e: converge_watch::IdError| CommandError::BadTarget(e.to_string()))?;
    let client = ctx.connect().await?;
    let action = format!("delete {id}");
    call(&action, Some(&id.to_string()), client.delete(&id, None)).await?;
    tracing::debug!(id = %id, "deleted");
    ctx.print(&format!("{id} deleted\n"))
}
