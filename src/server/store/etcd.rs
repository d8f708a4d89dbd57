//! `EtcdStore`: the entity store on an existing etcd cluster (distributed mode), through
//! the `etcd-client` crate. See `docs/etcd.md` for the key layout and revision mapping.

mod codec;
mod watch;
mod write;

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use converge_watch::{Backoff, BackoffConfig, Entity, EntityId, Jitter, Kind};
use etcd_client::{Client, CompactionOptions, ConnectOptions, GetOptions, KvClient};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{EventStream, Fence, Listing, PutOp, Store, StoreError};
pub use codec::DEFAULT_PREFIX;
use codec::Keys;

/// The most operations etcd accepts in one transaction by default (`--max-txn-ops`); a
/// put batch of more distinct entities is refused rather than split.
pub const MAX_TXN_OPS: usize = 128;

/// How long reads keep retrying through a leader election or the loss of one member.
const READ_RETRY: Duration = Duration::from_secs(5);

/// Largest gRPC message the store accepts from etcd (lists and watch batches).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How to reach an etcd cluster and where in its key space the entities live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members, e.g. `http://127.0.0.1:2379`; requests are balanced
    /// over the ones that answer.
    pub endpoints: Vec<String>,
    /// Key prefix; entities live under `<prefix>/entities/`. Normalized (leading `/` added,
    /// trailing `/` dropped).
    pub prefix: String,
    /// How long establishing a connection to one member may take.
    pub connect_timeout: Duration,
    /// How long one unary request may take.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// A configuration for `endpoints` with the default prefix (`/converge`), a 3 s connect
    /// timeout and a 10 s request timeout.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What the store, its writes and its watch tasks share: the client and the key layout.
#[derive(Clone)]
pub(crate) struct Conn {
    client: Client,
    keys: Keys,
    closed: CancellationToken,
}

impl Conn {
    /// `Unavailable` once the store is closed.
    fn ensure_open(&self) -> Result<(), StoreError> {
        if self.closed.is_cancelled() {
            return Err(StoreError::Unavailable {
                message: "the store is closed".into(),
                source: None,
            });
        }
        Ok(())
    }

    /// A KV client, or `Unavailable` once the store is closed.
    fn kv(&self) -> Result<KvClient, StoreError> {
        self.ensure_open()?;
        Ok(self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES))
    }

    /// Runs an idempotent read, retrying failures that a leader election or the loss of one
    /// member causes for up to [`READ_RETRY`]; then `Unavailable` with the last cause.
    async fn read<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + READ_RETRY;
        let mut backoff = Backoff::new(BackoffConfig {
            base: Duration::from_millis(50),
            max: Duration::from_millis(500),
            jitter: Jitter::Equal,
            reset_after: READ_RETRY,
        });
        loop {
            match call(self.kv()?).await {
                Ok(out) => return Ok(out),
                Err(e) if transient(&e) && Instant::now() < deadline => {
                    let delay = backoff.next_delay();
                    tracing::debug!(error = %e, ?delay, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(unavailable(what, e)),
            }
        }
    }

    /// The current store-wide revision (the header revision of a linearizable read).
    async fn revision(&self) -> Result<i64, StoreError> {
        let key = self.keys.probe();
        let resp = self
            .read("cannot read the revision", |mut kv| {
                let key = key.clone();
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        header_revision(resp.header())
    }
}

/// A [`Store`] on etcd. Entities are keys `<prefix>/entities/<kind>/<name>` holding the
/// entity JSON without its revisions: an entity's `revision` is its key's `mod_revision`,
/// `create_revision` its key's `create_revision`, and the store-wide revision is etcd's.
/// All changes of one put batch share one revision (one etcd transaction). History is
/// kept until etcd compacts it (`--auto-compaction-*`), and watches older than that answer
/// `Compacted`. Every etcd failure is `Unavailable` with the cause.
pub struct EtcdStore {
    conn: Conn,
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers a read within the request
    /// timeout; fails with `Unavailable` (naming the endpoints) otherwise.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        let endpoints = config.endpoints.join(",");
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| unavailable(format!("cannot connect to etcd at {endpoints}"), e))?;
        let conn = Conn {
            client,
            keys: Keys::new(&config.prefix),
            closed: CancellationToken::new(),
        };
        let probe = tokio::time::timeout(config.request_timeout, conn.revision()).await;
        match probe {
            Ok(Ok(revision)) => {
                tracing::info!(%endpoints, prefix = conn.keys.prefix(), revision, "connected to etcd");
                Ok(Self { conn })
            }
            Ok(Err(e)) => Err(StoreError::Unavailable {
                message: format!("etcd at {endpoints} does not answer: {e}"),
                source: Some(Box::new(e)),
            }),
            Err(_) => Err(StoreError::Unavailable {
                message: format!(
                    "etcd at {endpoints} did not answer within {:?}",
                    config.request_timeout
                ),
                source: None,
            }),
        }
    }

    /// The normalized key prefix this store uses.
    pub fn prefix(&self) -> &str {
        self.conn.keys.prefix()
    }

    /// The etcd client this store talks through (a cheap clone sharing its connections),
    /// for the leader election of cluster-wide work (`crate::server::leader`).
    pub fn etcd_client(&self) -> Client {
        self.conn.client.clone()
    }

    /// Compacts etcd's history up to `revision` (the Compact RPC, waiting until it is
    /// physically applied): watches from an older revision then answer `Compacted`. This
    /// compacts the whole cluster, not only this prefix; in production leave it to etcd's
    /// `--auto-compaction-*`. Fails with `Unavailable` if etcd refuses (e.g. a revision that
    /// is already compacted or in the future).
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.conn
            .kv()?
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(|e| unavailable(format!("cannot compact at revision {revision}"), e))?;
        tracing::info!(revision, "compacted etcd history");
        Ok(())
    }
}

/// True for failures that a retry may cure: no leader, a leader change, a lost connection.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::Unavailable,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Builds an `Unavailable` error from an etcd client error, keeping it as the source.
pub(crate) fn unavailable(message: impl Into<String>, source: etcd_client::Error) -> StoreError {
    StoreError::Unavailable {
        message: format!("{}: {source}", message.into()),
        source: Some(Box::new(source)),
    }
}

/// The revision of a response header; `Unavailable` if etcd sent none.
pub(crate) fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
) -> Result<i64, StoreError> {
    header
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| StoreError::Unavailable {
            message: "etcd sent a response without a header".into(),
            source: None,
        })
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, id: &EntityId) -> Result<Option<Entity>, StoreError> {
        let key = self.conn.keys.entity(id);
        let resp = self
            .conn
            .read(&format!("cannot read {id}"), |mut kv| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        resp.kvs()
            .first()
            .map(|kv| codec::decode(&self.conn.keys, kv))
            .transpose()
    }

    async fn list(&self, kind: Option<Kind>) -> Result<Listing, StoreError> {
        let range = self.conn.keys.range(kind);
        let resp = self
            .conn
            .read("cannot list entities", |mut kv| {
                let range = range.clone();
                async move { kv.get(range, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = header_revision(resp.header())?;
        // etcd returns keys in byte order, which is the order of their ids.
        let entities = resp
            .kvs()
            .iter()
            .map(|kv| codec::decode(&self.conn.keys, kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Listing { entities, revision })
    }

    async fn put(&self, ops: Vec<PutOp>) -> Result<Vec<Entity>, StoreError> {
        write::put(&self.conn, ops).await
    }

    async fn patch_status(
        &self,
        id: &EntityId,
        status: Value,
        expected_revision: i64,
    ) -> Result<Entity, StoreError> {
        write::patch_status(&self.conn, id, status, expected_revision).await
    }

    async fn delete(
        &self,
        id: &EntityId,
        expected_revision: Option<i64>,
    ) -> Result<(Entity, i64), StoreError> {
        write::delete(&self.conn, id, expected_revision).await
    }

    async fn delete_fenced(
        &self,
        id: &EntityId,
        expected_revision: Option<i64>,
        fence: Option<&Fence>,
    ) -> Result<(Entity, i64), StoreError> {
        match fence {
            Some(fence) => write::delete_fenced(&self.conn, id, expected_revision, fence).await,
            None => write::delete(&self.conn, id, expected_revision).await,
        }
    }

    async fn watch(
        &self,
        kind: Option<Kind>,
        from_revision: i64,
    ) -> Result<EventStream, StoreError> {
        watch::watch(&self.conn, kind, from_revision).await
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        self.conn.revision().await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Ends every watch task; later calls answer `Unavailable`. Nothing to flush: every
        // write was acknowledged by a quorum before it returned.
        self.conn.closed.cancel();
        tracing::info!(prefix = self.conn.keys.prefix(), "closed etcd store");
        Ok(())
    }
}
