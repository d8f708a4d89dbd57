//! `converge artifact import` and `converge artifact archive`: push an image tar to the
//! artifact registry and record it as an `artifact` entity; retire an artifact.
//!
//! The library API ([`import_image`], [`archive_artifact`]) takes a connected
//! [`EntityClient`]; the clap-facing [`import`] and [`archive`] connect first.

pub mod layout;
pub mod push;
pub mod reference;
pub mod tarball;

use std::path::PathBuf;
use std::sync::Arc;

use converge_watch::client::{ClientError, EntityClient};
use converge_watch::spec::{ArtifactSpec, ArtifactState};
use converge_watch::{Entity, EntityId, IdError, Kind, ServerAddress};

pub use layout::{ImagePlan, LayoutError};
pub use push::{PushError, PushSummary};
pub use reference::{CLUSTER_REGISTRY, ImageRef, RefError};
pub use tarball::TarballError;

use crate::registry::Digest;

/// Default registry URL the importer pushes to.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:5000";

/// How often `archive` re-reads and retries after a revision conflict.
const ARCHIVE_ATTEMPTS: usize = 5;

/// Why an import or archive failed. Nothing is written to the entity server unless the
/// whole image was pushed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The image reference or `--id` is unusable.
    #[error(transparent)]
    Reference(#[from] RefError),
    /// The id given to `--id` or `archive` is invalid.
    #[error("invalid artifact id: {0}")]
    Id(#[from] IdError),
    /// The id names another kind.
    #[error("{0} is not an artifact id")]
    NotArtifact(String),
    /// The tar could not be read.
    #[error(transparent)]
    Tarball(#[from] TarballError),
    /// The archive's content is not a consistent image.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The registry push failed.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The entity server call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The artifact does not exist.
    #[error("{0} not found")]
    NotFound(EntityId),
    /// The stored artifact spec is not an artifact spec.
    #[error("{id} has an invalid spec: {source}")]
    BadSpec {
        /// The artifact.
        id: EntityId,
        /// The decoding failure.
        #[source]
        source: serde_json::Error,
    },
    /// Concurrent writers kept changing the artifact.
    #[error("{0} kept changing; gave up after {ARCHIVE_ATTEMPTS} attempts")]
    Contended(EntityId),
    /// A blocking task failed.
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// `converge artifact import FILE --name REF [--id NAME] [--registry-url URL]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ArtifactImportArgs {
    /// An OCI image layout tar (oci-archive) or a `docker save` tar.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Image reference to publish under: `NAME:TAG` or `cluster.local:5000/NAME:TAG`.
    #[arg(long = "name", value_name = "REF")]
    pub name: String,
    /// Artifact entity name (default: derived from REF, e.g. `demo-v1`).
    #[arg(long = "id", value_name = "NAME")]
    pub id: Option<String>,
    /// Registry to push to.
    #[arg(long = "registry-url", env = "CONVERGE_REGISTRY_URL", default_value = DEFAULT_REGISTRY_URL)]
    pub registry_url: String,
}

/// `converge artifact archive ID`.
#[derive(Debug, Clone, clap::Args)]
pub struct ArchiveArgs {
    /// `artifact/NAME` or `NAME`.
    #[arg(value_name = "ID")]
    pub id: String,
}

/// What to import, independent of clap.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// The tar file.
    pub file: PathBuf,
    /// The image reference.
    pub image: ImageRef,
    /// The artifact entity to create or update.
    pub id: EntityId,
    /// The registry base URL.
    pub registry_url: String,
    /// Sent to the registry as `Authorization: Bearer <token>` (the global `--token-file`).
    pub token: Option<converge_watch::BearerToken>,
    /// CA certificate(s) an `https` registry is verified with (the global `--tls-ca`).
    pub registry_ca: Option<Vec<u8>>,
}

impl ImportRequest {
    /// Builds a request from CLI-shaped inputs: parses the reference and derives the id
    /// (`artifact/<name>`) unless `id` is given. Fails on a bad reference or id.
    pub fn new(
        file: PathBuf,
        reference: &str,
        id: Option<&str>,
        registry_url: &str,
    ) -> Result<Self, ArtifactError> {
        let image = ImageRef::parse(reference)?;
        let id = match id {
            Some(id) => parse_artifact_id(id)?,
            None => EntityId::new(Kind::Artifact, image.entity_name()?)?,
        };
        Ok(Self {
            file,
            image,
            id,
            registry_url: registry_url.to_string(),
            token: None,
            registry_ca: None,
        })
    }

    /// The same request, authenticating to the registry the way `options` authenticate to
    /// the entity server: its token, and its TLS CA for an `https` registry.
    pub fn with_access(mut self, options: &converge_watch::ClientOptions) -> Self {
        self.token = options.token.clone();
        self.registry_ca = options.tls.as_ref().map(|t| t.ca_pem.clone());
        self
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    /// The artifact entity as stored.
    pub entity: Entity,
    /// The full image reference recorded.
    pub image: String,
    /// The manifest digest recorded.
    pub manifest: Digest,
    /// Blob upload counts.
    pub push: PushSummary,
}

/// Accepts `artifact/NAME` or a bare `NAME`; refuses other kinds.
pub fn parse_artifact_id(s: &str) -> Result<EntityId, ArtifactError> {
    let id: EntityId = if s.contains('/') {
        s.parse()?
    } else {
        EntityId::new(Kind::Artifact, s)?
    };
    if id.kind() != Kind::Artifact {
        return Err(ArtifactError::NotArtifact(s.to_string()));
    }
    Ok(id)
}

/// Reads and verifies the tar, then pushes the image to the registry (no entity is written).
/// Every blob's digest is checked before the first request, so a corrupt archive or one
/// naming a missing blob fails without pushing anything.
pub async fn push_image(req: &ImportRequest) -> Result<(Digest, PushSummary), ArtifactError> {
    let file = req.file.clone();
    let image = req.image.clone();
    let (tar, plan) = tokio::task::spawn_blocking(move || -> Result<_, ArtifactError> {
        let tar = tarball::Tarball::open(&file)?;
        let plan = layout::plan_image(&tar, &image)?;
        Ok((Arc::new(tar), plan))
    })
    .await??;
    let pusher = push::RegistryPusher::new(&req.registry_url, req.image.repository.clone())?
        .with_access(req.token.as_ref(), req.registry_ca.as_deref())?;
    let bar = push::progress_bar(plan.total_bytes());
    let summary = pusher.push(tar, &plan, req.image.tag.as_str(), &bar).await;
    bar.finish_and_clear();
    let summary = summary?;
    tracing::info!(image = %req.image, manifest = %plan.manifest.digest, pushed = summary.pushed, skipped = summary.skipped, "image pushed");
    Ok((plan.manifest.digest, summary))
}

/// Pushes the image and then creates or updates its `artifact` entity with spec
/// `{image, manifest, state: active}`. Nothing is written to the entity server when the push fails.
pub async fn import_image(
    client: &EntityClient,
    req: &ImportRequest,
) -> Result<ImportOutcome, ArtifactError> {
    let (manifest, push) = push_image(req).await?;
    let spec = ArtifactSpec {
        image: req.image.to_string(),
        manifest: manifest.to_string(),
        state: ArtifactState::Active,
    };
    let value = serde_json::to_value(&spec).map_err(|source| ArtifactError::BadSpec {
        id: req.id.clone(),
        source,
    })?;
    let entity = client.put(&req.id, &value, None).await?;
    tracing::info!(id = %req.id, "artifact recorded");
    Ok(ImportOutcome {
        entity,
        image: spec.image,
        manifest,
        push,
    })
}

/// Sets `state: archived` on an artifact with a revision-checked put, re-reading and
/// retrying on conflict. An artifact already archived is returned unchanged.
pub async fn archive_artifact(
    client: &EntityClient,
    id: &EntityId,
) -> Result<Entity, ArtifactError> {
    for _ in 0..ARCHIVE_ATTEMPTS {
        let entity = client
            .get(id)
            .await?
            .ok_or_else(|| ArtifactError::NotFound(id.clone()))?;
        let mut spec: ArtifactSpec =
            serde_json::from_value(entity.spec.clone()).map_err(|source| {
                ArtifactError::BadSpec {
                    id: id.clone(),
                    source,
                }
            })?;
        if spec.state == ArtifactState::Archived {
            return Ok(entity);
        }
        spec.state = ArtifactState::Archived;
        let value = serde_json::to_value(&spec).map_err(|source| ArtifactError::BadSpec {
            id: id.clone(),
            source,
        })?;
        match client.put(id, &value, Some(entity.revision)).await {
            Ok(updated) => {
                tracing::info!(%id, "artifact archived");
                return Ok(updated);
            }
            Err(ClientError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ArtifactError::Contended(id.clone()))
}

/// `converge artifact import`: connects to `server` and runs [`import_image`].
pub async fn import(
    args: &ArtifactImportArgs,
    server: &ServerAddress,
) -> Result<ImportOutcome, ArtifactError> {
    let req = ImportRequest::new(
        args.file.clone(),
        &args.name,
        args.id.as_deref(),
        &args.registry_url,
    )?;
    // Verify and push before connecting would leave a pushed image without an entity if the
    // server is down; connect first so an unreachable server fails before any push.
    let client = EntityClient::connect(server).await?;
    import_image(&client, &req).await
}

/// `converge artifact archive`: connects to `server` and runs [`archive_artifact`].
pub async fn archive(args: &ArchiveArgs, server: &ServerAddress) -> Result<Entity, ArtifactError> {
    let id = parse_artifact_id(&args.id)?;
    let client = EntityClient::connect(server).await?;
    archive_artifact(&client, &id).await
}
