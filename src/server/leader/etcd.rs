//! The election on etcd: one key `<prefix>/leader/<task>` created under a lease by a
//! transaction that succeeds only while the key does not exist; the key's create revision
//! is the term's fencing revision.

use std::time::Duration;

use async_trait::async_trait;
use converge_watch::{Backoff, BackoffConfig, Jitter};
use etcd_client::{
    Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{LeaderError, LeaderTerm, Leadership, MIN_LEADER_TTL, valid_task};
use crate::server::store::Fence;
use term::{Lease, monitor};

mod term;

/// How long one etcd request of the election may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// An election for one task on etcd, through the entity store's client (or any other).
/// The leader holds the key `<prefix>/leader/<task>` (value: its identity) attached to a
/// lease of `ttl`, renewed every `ttl / 3`. Followers watch the key and try again the
/// moment it is deleted (resign, lease expiry). A leader considers its term lost when no
/// renewal has been acknowledged for `2/3 ttl` (so it stops before etcd can expire the
/// lease and elect someone else, whatever the clocks say), or when the key is deleted or
/// recreated.
#[derive(Clone)]
pub struct EtcdLeadership {
    client: Client,
    task: String,
    key: String,
    identity: String,
    ttl: Duration,
}

impl std::fmt::Debug for EtcdLeadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLeadership")
            .field("key", &self.key)
            .field("identity", &self.identity)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> LeaderError {
    let what = what.into();
    move |source| LeaderError::Etcd { what, source }
}

/// Runs an etcd request with [`REQUEST_TIMEOUT`]; a timeout is reported as an etcd error.
async fn timed<T>(
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, LeaderError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(etcd(what)),
        Err(_) => Err(LeaderError::Timeout {
            what: what.to_string(),
            after: REQUEST_TIMEOUT,
        }),
    }
}

impl EtcdLeadership {
    /// The election for `task` under `prefix` (the entity store's prefix, e.g.
    /// `/converge`), held with a lease of `ttl` (whole seconds, at least 2 s) by a server
    /// that calls itself `identity` (stored as the key's value, for people reading etcd).
    pub fn new(
        client: Client,
        prefix: &str,
        task: &str,
        identity: &str,
        ttl: Duration,
    ) -> Result<Self, LeaderError> {
        valid_task(task)?;
        if ttl < MIN_LEADER_TTL {
            return Err(LeaderError::TtlTooShort(ttl));
        }
        Ok(Self {
            client,
            task: task.to_string(),
            key: format!("{}/leader/{task}", prefix.trim_end_matches('/')),
            identity: identity.to_string(),
            ttl,
        })
    }

    /// The election key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Who leads now: the holder's identity and the term's fencing revision, or `None`.
    pub async fn holder(&self) -> Result<Option<(String, i64)>, LeaderError> {
        let mut kv = self.client.kv_client();
        let resp = timed("read the leader key", kv.get(self.key.as_str(), None)).await?;
        Ok(resp.kvs().first().map(|kv| {
            (
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.create_revision(),
            )
        }))
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// One campaign with one lease: `Ok(None)` when stopped, `Err` when the lease or etcd
    /// failed (the caller starts over with a new lease).
    async fn campaign_once(
        &self,
        stop: &CancellationToken,
    ) -> Result<Option<LeaderTerm>, LeaderError> {
        let mut client = self.client.clone();
        let grant = timed(
            "grant the leader lease",
            client.lease_grant(self.ttl_secs(), None),
        )
        .await?;
        let id = grant.id();
        let (keeper, responses) =
            timed("keep the leader lease alive", client.lease_keep_alive(id)).await?;
        let mut lease = Lease {
            id,
            keeper,
            responses,
        };
        match self.wait_for_turn(&mut lease, stop).await {
            Ok(Some((fencing, renewed))) => {
                let lost = CancellationToken::new();
                tokio::spawn(monitor(self.clone(), lease, fencing, renewed, lost.clone()));
                Ok(Some(LeaderTerm {
                    task: self.task.clone(),
                    fencing,
                    lost,
                    fence: Some(Fence {
                        key: self.key.clone(),
                        fencing,
                    }),
                    lease: Some(id),
                }))
            }
            other => {
                self.revoke(id).await;
                other.map(|_| None)
            }
        }
    }

    /// Tries to create the key until it succeeds, renewing the lease meanwhile; returns the
    /// fencing revision and when the lease was last renewed (or granted).
    async fn wait_for_turn(
        &self,
        lease: &mut Lease,
        stop: &CancellationToken,
    ) -> Result<Option<(i64, Instant)>, LeaderError> {
        let mut renewed = Instant::now();
        let mut kv = self.client.kv_client();
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            let key = self.key.as_str();
            let create = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    self.identity.as_str(),
                    Some(PutOptions::new().with_lease(lease.id)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let resp = timed("campaign", kv.txn(create)).await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                return Ok(Some((revision, renewed)));
            }
            let holder = resp.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            });
            if let Some(holder) = &holder
                && holder.lease() == lease.id
            {
                // An earlier attempt of ours landed after all.
                return Ok(Some((holder.create_revision(), renewed)));
            }
            tracing::debug!(key, holder = ?holder.as_ref().map(|h| String::from_utf8_lossy(h.value()).into_owned()), "another server leads; waiting");
            let mut watch = self.watch_from(revision + 1).await?;
            let mut tick = tokio::time::interval(self.renew_every());
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick.reset();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(None),
                    _ = tick.tick() => {
                        let sent = Instant::now();
                        lease.renew().await?;
                        renewed = sent;
                    }
                    message = watch.message() => match message {
                        // The stream's first answer confirms the watch; wait for events.
                        Ok(Some(resp)) if resp.events().is_empty() && !resp.canceled() => {}
                        // The key changed (deleted: our turn may have come), or the watch
                        // ended: try again.
                        _ => break,
                    },
                }
            }
        }
    }

    async fn watch_from(&self, revision: i64) -> Result<WatchStream, LeaderError> {
        let mut watch = self.client.watch_client();
        timed(
            "watch the leader key",
            watch.watch(
                self.key.as_str(),
                Some(WatchOptions::new().with_start_revision(revision)),
            ),
        )
        .await
    }

    async fn revoke(&self, lease: i64) {
        let mut client = self.client.clone();
        if let Err(e) = timed("revoke the leader lease", client.lease_revoke(lease)).await {
            tracing::warn!(task = %self.task, error = %e, "cannot revoke the leader lease; it expires on its own");
        }
    }
}

#[async_trait]
impl Leadership for EtcdLeadership {
    fn task(&self) -> &str {
        &self.task
    }

    async fn campaign(&self, stop: &CancellationToken) -> Option<LeaderTerm> {
        let mut backoff = Backoff::new(BackoffConfig {
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
            jitter: Jitter::Equal,
            reset_after: Duration::from_secs(60),
        });
        loop {
            match self.campaign_once(stop).await {
                Ok(Some(term)) => {
                    tracing::info!(task = %self.task, key = %self.key, fencing = term.fencing, identity = %self.identity, "elected leader");
                    return Some(term);
                }
                Ok(None) => return None,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(task = %self.task, error = %e, ?delay, "campaign failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn check(&self, term: &LeaderTerm) -> Result<(), LeaderError> {
        term.ensure_alive()?;
        match self.holder_kv().await? {
            Some((create_revision, lease))
                if create_revision == term.fencing && Some(lease) == term.lease =>
            {
                Ok(())
            }
            _ => Err(LeaderError::Lost {
                task: self.task.clone(),
                fencing: term.fencing,
            }),
        }
    }

    async fn resign(&self, term: &LeaderTerm) {
        term.lost.cancel();
        if let Some(lease) = term.lease {
            // Revoking the lease deletes the key at once; followers' watches fire.
            self.revoke(lease).await;
            tracing::info!(task = %self.task, fencing = term.fencing, "resigned leadership");
        }
    }
}

impl EtcdLeadership {
    /// The leader key's create revision and lease, if it exists.
    async fn holder_kv(&self) -> Result<Option<(i64, i64)>, LeaderError> {
        let mut kv = self.client.kv_client();
        let resp = timed("read the leader key", kv.get(self.key.as_str(), None)).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.create_revision(), kv.lease())))
    }
}
