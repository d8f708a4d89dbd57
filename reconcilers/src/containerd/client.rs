//! The connection to containerd: a lazily (re)connecting channel plus the namespace and lease headers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use hyper_util::rt::TokioIo;
use tonic::Request;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::error::{ContainerdError, StatusContext};
use super::ids::is_valid_identifier;

/// Namespace used when `--namespace` is not given.
pub const DEFAULT_NAMESPACE: &str = "converge";
/// Snapshotter every converge container and image uses.
pub const SNAPSHOTTER: &str = "overlayfs";
/// gRPC metadata key carrying the namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// gRPC metadata key carrying a lease id.
const LEASE_HEADER: &str = "containerd-lease";

/// A handle on one containerd (socket) and one namespace. Cheap to clone; clones share the
/// channel. The channel connects lazily and reconnects by itself after containerd restarts:
/// calls made while containerd is down fail with [`ContainerdError::Unavailable`] and callers
/// retry (or call [`ContainerdClient::wait_ready`]).
#[derive(Debug, Clone)]
pub struct ContainerdClient {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    namespace_header: AsciiMetadataValue,
    runc_root: Option<PathBuf>,
}

impl ContainerdClient {
    /// Creates a client for the containerd listening on `socket`, acting in `namespace`
    /// (see [`DEFAULT_NAMESPACE`]). Does not connect yet. Fails with `InvalidInput` when the
    /// namespace breaks containerd's identifier rules. Must be called within a Tokio runtime
    /// (the channel's worker is spawned on it).
    pub fn new(socket: impl AsRef<Path>, namespace: &str) -> Result<Self, ContainerdError> {
        let op = || format!("connect to containerd namespace {namespace:?}");
        if !is_valid_identifier(namespace) {
            return Err(ContainerdError::invalid(
                op(),
                "a namespace is 1-76 letters/digits separated by single '.', '_' or '-'",
            ));
        }
        let namespace_header: AsciiMetadataValue = MetadataValue::try_from(namespace)
            .map_err(|e| ContainerdError::invalid(op(), e.to_string()))?;
        let socket = socket.as_ref().to_path_buf();
        let connector_path = socket.clone();
        // The URI is ignored: every connection goes to the unix socket.
        let channel = Endpoint::from_static("http://containerd.invalid")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = connector_path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        Ok(ContainerdClient {
            channel,
            socket,
            namespace: namespace.to_string(),
            namespace_header,
            runc_root: None,
        })
    }

    /// Makes tasks keep runc's state under `root` instead of runc's default
    /// (`/run/containerd/runc`); tests use this to stay off host paths.
    pub fn with_runc_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.runc_root = Some(root.into());
        self
    }

    /// The namespace every call acts in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runc root given with [`ContainerdClient::with_runc_root`], if any.
    pub fn runc_root(&self) -> Option<&Path> {
        self.runc_root.as_deref()
    }

    /// Wraps `msg` in a request carrying the namespace header.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace_header.clone());
        req
    }

    /// Like [`Self::request`], also attaching `lease` so what the call creates is held by it.
    pub(crate) fn leased_request<T>(
        &self,
        msg: T,
        lease: Option<&str>,
    ) -> Result<Request<T>, ContainerdError> {
        let mut req = self.request(msg);
        if let Some(lease) = lease {
            let value = MetadataValue::try_from(lease).map_err(|e| {
                ContainerdError::invalid(format!("use lease {lease:?}"), e.to_string())
            })?;
            req.metadata_mut().insert(LEASE_HEADER, value);
        }
        Ok(req)
    }

    pub(crate) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    pub(crate) fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(32 * 1024 * 1024)
    }

    pub(crate) fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }

    pub(crate) fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }

    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    pub(crate) fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    pub(crate) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    pub(crate) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    /// containerd's version string. Fails with `Unavailable` when containerd is not reachable.
    pub async fn version(&self) -> Result<String, ContainerdError> {
        let resp = VersionClient::new(self.channel.clone())
            .version(())
            .await
            .op(|| "containerd version".to_string())?;
        Ok(resp.into_inner().version)
    }

    /// Waits until containerd answers, retrying with exponential backoff (50 ms doubling to
    /// 1 s). Fails with the last error when `timeout` passes first.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ContainerdError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            match self.version().await {
                Ok(_) => return Ok(()),
                Err(err) if tokio::time::Instant::now() + delay >= deadline => return Err(err),
                Err(err) => {
                    tracing::debug!(error = %err, ?delay, "containerd not ready yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_namespaces_are_refused_before_connecting() {
        let err = ContainerdClient::new("/nonexistent.sock", "Bad--ns").expect_err("refused");
        assert!(matches!(err, ContainerdError::InvalidInput { .. }));
        assert!(ContainerdClient::new("/nonexistent.sock", "").is_err());
    }

    #[tokio::test]
    async fn calls_to_a_missing_socket_report_unavailable() {
        let client = ContainerdClient::new("/nonexistent/containerd.sock", DEFAULT_NAMESPACE)
            .expect("lazy client");
        let err = client.version().await.expect_err("no containerd");
        assert!(err.is_unavailable(), "{err}");
    }
}
