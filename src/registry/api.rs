//! The axum application serving the OCI distribution `/v2/` API over an [`ArtifactStore`].
//!
//! Repository names contain `/`, so every `/v2/<name>/...` request goes through one
//! catch-all route and is split here from the right (`blobs/uploads/<id>`, `blobs/<digest>`,
//! `manifests/<reference>`, `tags/list`); every part is validated before it reaches the store.

mod blobs;
mod manifests;

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;
use tracing::Instrument;

use super::auth::{RegistryAuth, require_token};
use super::error::ApiError;
use super::names::RepoName;
use super::store::ArtifactStore;

/// Header every `/v2/` response carries.
pub const API_VERSION_HEADER: &str = "Docker-Distribution-API-Version";

type ApiResult = Result<Response, ApiError>;

/// Builds the registry application over `store`, open to every request. Never fails; every
/// request error becomes a spec JSON error response.
pub fn registry_router(store: ArtifactStore) -> Router {
    registry_router_with(store, RegistryAuth::open())
}

/// Like [`registry_router`], and every request (`/v2/` itself included, where clients learn
/// the challenge) must pass `auth` before a handler or the store sees it.
pub fn registry_router_with(store: ArtifactStore, auth: RegistryAuth) -> Router {
    Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/_catalog", get(catalog))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", "not a /v2/ API path")
        })
        .layer(axum::middleware::from_fn_with_state(auth, require_token))
        .layer(axum::middleware::map_response(add_version_header))
        .with_state(store)
}

async fn add_version_header(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}

async fn base() -> Response {
    axum::Json(json!({})).into_response()
}

/// What a `/v2/<rest>` path addresses.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Upload { name: &'a str, id: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Tags { name: &'a str },
}

fn parse_target<'a>(rest: &'a str, method: &Method) -> Option<Target<'a>> {
    let (prefix, last) = rest.rsplit_once('/')?;
    if let Some(name) = prefix.strip_suffix("/blobs/uploads") {
        return Some(Target::Upload { name, id: last });
    }
    if let Some(name) = prefix.strip_suffix("/blobs") {
        if last == "uploads" && method == Method::POST {
            return Some(Target::Upload { name, id: "" });
        }
        return Some(Target::Blob { name, digest: last });
    }
    if let Some(name) = prefix.strip_suffix("/manifests") {
        return Some(Target::Manifest {
            name,
            reference: last,
        });
    }
    if let Some(name) = prefix.strip_suffix("/tags")
        && last == "list"
    {
        return Some(Target::Tags { name });
    }
    None
}

async fn dispatch(
    State(store): State<ArtifactStore>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let Some(target) = parse_target(&rest, &method) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!("no such API path /v2/{rest}"),
        ));
    };
    let name: RepoName = match &target {
        Target::Upload { name, .. }
        | Target::Blob { name, .. }
        | Target::Manifest { name, .. }
        | Target::Tags { name } => name.parse()?,
    };
    let span = tracing::debug_span!("registry", repo = %name, %method);
    route(&store, &name, target, method, &query, &headers, body, &rest)
        .instrument(span)
        .await
}

#[allow(clippy::too_many_arguments)]
async fn route(
    store: &ArtifactStore,
    name: &RepoName,
    target: Target<'_>,
    method: Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
    rest: &str,
) -> ApiResult {
    let req = blobs::Request {
        store,
        name,
        query,
        headers,
    };
    match (target, method) {
        (Target::Tags { .. }, Method::GET) => tags_list(store, name, query).await,
        (Target::Blob { digest, .. }, m) if m == Method::GET || m == Method::HEAD => {
            blobs::get_blob(&req, digest, m == Method::HEAD).await
        }
        (Target::Blob { digest, .. }, Method::DELETE) => blobs::delete_blob(&req, digest).await,
        (Target::Upload { id: "", .. }, Method::POST) => blobs::start_upload(&req, body).await,
        (Target::Upload { id, .. }, Method::PATCH) if !id.is_empty() => {
            blobs::patch_upload(&req, id, body).await
        }
        (Target::Upload { id, .. }, Method::PUT) if !id.is_empty() => {
            blobs::finish_upload(&req, id, body).await
        }
        (Target::Upload { id, .. }, Method::GET) if !id.is_empty() => {
            blobs::upload_status(&req, id).await
        }
        (Target::Upload { id, .. }, Method::DELETE) if !id.is_empty() => {
            blobs::cancel_upload(&req, id).await
        }
        (Target::Manifest { reference, .. }, m) if m == Method::GET || m == Method::HEAD => {
            manifests::get_manifest(&req, reference, m == Method::HEAD).await
        }
        (Target::Manifest { reference, .. }, Method::PUT) => {
            manifests::put_manifest(&req, reference, body).await
        }
        (Target::Manifest { reference, .. }, Method::DELETE) => {
            manifests::delete_manifest(&req, reference).await
        }
        (_, m) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{m} is not supported on /v2/{rest}"),
        )),
    }
}

/// Applies the spec's `n` / `last` pagination to a sorted list.
fn paginate(items: Vec<String>, query: &HashMap<String, String>) -> Result<Vec<String>, ApiError> {
    let mut items: Vec<String> = match query.get("last") {
        Some(last) => items.into_iter().filter(|i| i > last).collect(),
        None => items,
    };
    if let Some(n) = query.get("n") {
        let n: usize = n.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("invalid n={n}"),
            )
        })?;
        items.truncate(n);
    }
    Ok(items)
}

async fn tags_list(
    store: &ArtifactStore,
    name: &RepoName,
    query: &HashMap<String, String>,
) -> ApiResult {
    let tags = store.list_tags(name).await?;
    if tags.is_empty() && store.repository_manifests(name).await?.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {name} is unknown"),
        ));
    }
    let tags = paginate(tags.iter().map(|t| t.to_string()).collect(), query)?;
    Ok(axum::Json(json!({"name": name.as_str(), "tags": tags})).into_response())
}

async fn catalog(
    State(store): State<ArtifactStore>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let repos = store.list_repositories().await?;
    let repos = paginate(repos.iter().map(|r| r.to_string()).collect(), &query)?;
    Ok(axum::Json(json!({"repositories": repos})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_split_from_the_right_so_names_may_contain_keywords() {
        assert_eq!(
            parse_target("a/blobs/b/blobs/sha256:x", &Method::GET),
            Some(Target::Blob {
                name: "a/blobs/b",
                digest: "sha256:x"
            })
        );
        assert_eq!(
            parse_target("a/blobs/uploads/", &Method::POST),
            Some(Target::Upload { name: "a", id: "" })
        );
        assert_eq!(
            parse_target("a/blobs/uploads", &Method::POST),
            Some(Target::Upload { name: "a", id: "" })
        );
        assert_eq!(
            parse_target("t/manifests/v1", &Method::PUT),
            Some(Target::Manifest {
                name: "t",
                reference: "v1"
            })
        );
        assert_eq!(
            parse_target("t/tags/list", &Method::GET),
            Some(Target::Tags { name: "t" })
        );
        assert_eq!(parse_target("t/other/x", &Method::GET), None);
    }
}
