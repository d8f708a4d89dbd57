//! The registry's `/v2/` API against a real server on loopback: uploads, manifests, tags,
//! catalog, and refusal of bad names, digests, sizes and dangling manifests.

mod registry_support;

use converge::registry::{ArtifactStore, Digest};
use registry_support::{RegistryServer, serve_registry};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

struct Registry {
    url: String,
    _dir: tempfile::TempDir,
    _registry: RegistryServer,
    store: ArtifactStore,
}

async fn start_registry() -> Registry {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(dir.path().join("artifacts"))
        .await
        .expect("open store");
    let registry = serve_registry(store.clone()).await;
    Registry {
        url: registry.url.clone(),
        _dir: dir,
        _registry: registry,
        store,
    }
}

fn digest(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

async fn error_code(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.expect("json error body");
    body["errors"][0]["code"]
        .as_str()
        .expect("code")
        .to_string()
}

/// Sends `GET path` byte for byte and returns the status code and body.
async fn raw_get(url: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.expect("read");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn push_monolithic(c: &Client, r: &Registry, repo: &str, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let resp = c
        .post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", r.url))
        .body(bytes.to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::CREATED);
    d
}

fn manifest_for(config: &str, config_len: usize, layer: &str, layer_len: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_len}]
    }))
    .expect("json")
}

#[tokio::test]
async fn base_endpoint_announces_the_api_version() {
    let r = start_registry().await;
    let resp = reqwest::get(format!("{}/v2/", r.url)).await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn monolithic_upload_stores_a_blob_that_can_be_read_back() {
    let r = start_registry().await;
    let c = Client::new();
    let d = push_monolithic(&c, &r, "demo", b"hello blob").await;
    let head = c
        .head(format!("{}/v2/demo/blobs/{d}", r.url))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "10");
    assert_eq!(head.headers()["docker-content-digest"], d.as_str());
    let body = c
        .get(format!("{}/v2/demo/blobs/{d}", r.url))
        .send()
        .await
        .expect("get");
    assert_eq!(body.bytes().await.expect("bytes").as_ref(), b"hello blob");
    let ranged = c
        .get(format!("{}/v2/demo/blobs/{d}", r.url))
        .header("Range", "bytes=6-9")
        .send()
        .await
        .expect("range");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.expect("bytes").as_ref(), b"blob");
}

#[tokio::test]
async fn chunked_upload_assembles_chunks_in_order_and_refuses_out_of_order_ones() {
    let r = start_registry().await;
    let c = Client::new();
    let start = c
        .post(format!("{}/v2/team/app/blobs/uploads/", r.url))
        .send()
        .await
        .expect("post");
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    assert!(start.headers().contains_key("docker-upload-uuid"));
    let location = start.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let url = format!("{}{location}", r.url);

    let first = c
        .patch(&url)
        .header("Content-Range", "0-4")
        .body("hello")
        .send()
        .await
        .expect("patch");
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(first.headers()["range"], "0-4");

    let out_of_order = c
        .patch(&url)
        .header("Content-Range", "9-13")
        .body("world")
        .send()
        .await
        .expect("patch");
    assert_eq!(out_of_order.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let second = c
        .patch(&url)
        .header("Content-Range", "5-10")
        .body(" world")
        .send()
        .await
        .expect("patch");
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    let status = c.get(&url).send().await.expect("status");
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"], "0-10");

    let d = digest(b"hello world");
    let done = c
        .put(format!("{url}?digest={d}"))
        .send()
        .await
        .expect("put");
    assert_eq!(done.status(), StatusCode::CREATED);
    let got = c
        .get(format!("{}/v2/team/app/blobs/{d}", r.url))
        .send()
        .await
        .expect("get");
    assert_eq!(got.bytes().await.expect("bytes").as_ref(), b"hello world");
    assert!(r.store.list_uploads().await.expect("uploads").is_empty());
}

#[tokio::test]
async fn chunk_whose_length_disagrees_with_its_range_is_refused_and_not_kept() {
    let r = start_registry().await;
    let c = Client::new();
    let start = c
        .post(format!("{}/v2/demo/blobs/uploads/", r.url))
        .send()
        .await
        .expect("post");
    let url = format!(
        "{}{}",
        r.url,
        start.headers()["location"].to_str().expect("loc")
    );
    let resp = c
        .patch(&url)
        .header("Content-Range", "0-9")
        .body("short")
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "SIZE_INVALID");
    let status = c.get(&url).send().await.expect("status");
    assert_eq!(status.headers()["range"], "0-0");
}

#[tokio::test]
async fn upload_whose_content_does_not_match_its_digest_is_rejected_and_not_stored() {
    let r = start_registry().await;
    let c = Client::new();
    let wrong = digest(b"something else");
    let resp = c
        .post(format!("{}/v2/demo/blobs/uploads/?digest={wrong}", r.url))
        .body("actual content")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    assert!(r.store.list_blobs().await.expect("blobs").is_empty());
    assert!(r.store.list_uploads().await.expect("uploads").is_empty());
}

#[tokio::test]
async fn cancelled_upload_is_gone() {
    let r = start_registry().await;
    let c = Client::new();
    let start = c
        .post(format!("{}/v2/demo/blobs/uploads/", r.url))
        .send()
        .await
        .expect("post");
    let url = format!(
        "{}{}",
        r.url,
        start.headers()["location"].to_str().expect("loc")
    );
    assert_eq!(
        c.delete(&url).send().await.expect("delete").status(),
        StatusCode::NO_CONTENT
    );
    let resp = c.get(&url).send().await.expect("status");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn bad_names_digests_and_traversal_attempts_are_refused_with_spec_codes() {
    let r = start_registry().await;
    let c = Client::new();
    let good = digest(b"x");
    let cases = [
        (format!("/v2/Demo/blobs/{good}"), "NAME_INVALID"),
        (format!("/v2/a/%2e%2e/b/blobs/{good}"), "NAME_INVALID"),
        (format!("/v2/%2e%2e/blobs/{good}"), "NAME_INVALID"),
        ("/v2/demo/blobs/sha256:..".to_string(), "DIGEST_INVALID"),
        ("/v2/demo/blobs/md5:abc".to_string(), "DIGEST_INVALID"),
        ("/v2/demo/manifests/..".to_string(), "TAG_INVALID"),
        ("/v2/demo/manifests/%2e%2e".to_string(), "TAG_INVALID"),
    ];
    for (path, code) in cases {
        // Raw requests: an HTTP client library would normalise `%2e%2e` segments away.
        let (status, body) = raw_get(&r.url, &path).await;
        assert_eq!(status, 400, "{path}");
        let body: Value = serde_json::from_str(&body).expect("json error");
        assert_eq!(body["errors"][0]["code"], code, "{path}");
    }
    // An encoded slash splits the path differently: no API path matches, so it is refused.
    let (status, _) = raw_get(&r.url, "/v2/demo/blobs/sha256:..%2f..%2fetc").await;
    assert_eq!(status, 404);
    let resp = c
        .get(format!("{}/v2/demo/blobs/{good}", r.url))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn manifest_naming_a_missing_blob_is_refused() {
    let r = start_registry().await;
    let c = Client::new();
    let config = push_monolithic(&c, &r, "demo", b"{}").await;
    let missing = digest(b"never uploaded");
    let manifest = manifest_for(&config, 2, &missing, 14);
    let resp = c
        .put(format!("{}/v2/demo/manifests/v1", r.url))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
    let get = c
        .get(format!("{}/v2/demo/manifests/v1", r.url))
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(get).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifests_are_served_by_tag_and_digest_with_their_media_type_and_listed() {
    let r = start_registry().await;
    let c = Client::new();
    let config = push_monolithic(&c, &r, "team/app", b"{}").await;
    let layer = push_monolithic(&c, &r, "team/app", b"layer bytes").await;
    let manifest = manifest_for(&config, 2, &layer, 11);
    let md = digest(&manifest);
    for tag in ["v1", "latest"] {
        let resp = c
            .put(format!("{}/v2/team/app/manifests/{tag}", r.url))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["docker-content-digest"], md.as_str());
    }
    for reference in ["v1", md.as_str()] {
        let resp = c
            .get(format!("{}/v2/team/app/manifests/{reference}", r.url))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(resp.headers()["docker-content-digest"], md.as_str());
        assert_eq!(
            resp.bytes().await.expect("bytes").as_ref(),
            manifest.as_slice()
        );
    }
    let wrong = c
        .put(format!(
            "{}/v2/team/app/manifests/{}",
            r.url,
            digest(b"nope")
        ))
        .body(manifest.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(error_code(wrong).await, "DIGEST_INVALID");

    let tags: Value = c
        .get(format!("{}/v2/team/app/tags/list", r.url))
        .send()
        .await
        .expect("tags")
        .json()
        .await
        .expect("json");
    assert_eq!(tags, json!({"name": "team/app", "tags": ["latest", "v1"]}));
    let catalog: Value = c
        .get(format!("{}/v2/_catalog", r.url))
        .send()
        .await
        .expect("catalog")
        .json()
        .await
        .expect("json");
    assert_eq!(catalog, json!({"repositories": ["team/app"]}));

    let del = c
        .delete(format!("{}/v2/team/app/manifests/{md}", r.url))
        .send()
        .await
        .expect("del");
    assert_eq!(del.status(), StatusCode::ACCEPTED);
    let gone = c
        .get(format!("{}/v2/team/app/manifests/v1", r.url))
        .send()
        .await
        .expect("get");
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cross_repository_mount_links_an_existing_blob() {
    let r = start_registry().await;
    let c = Client::new();
    let d = push_monolithic(&c, &r, "one", b"shared").await;
    let resp = c
        .post(format!(
            "{}/v2/two/blobs/uploads/?mount={d}&from=one",
            r.url
        ))
        .send()
        .await
        .expect("mount");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["docker-content-digest"], d.as_str());
    let missing = digest(b"absent");
    let resp = c
        .post(format!(
            "{}/v2/two/blobs/uploads/?mount={missing}&from=one",
            r.url
        ))
        .send()
        .await
        .expect("mount");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn unknown_repository_has_no_tags() {
    let r = start_registry().await;
    let resp = reqwest::get(format!("{}/v2/nothing/tags/list", r.url))
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}
