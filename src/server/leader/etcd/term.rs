//! Keeping a won term alive: the lease's renewals and a watch on the leader key, ending the term when either fails.

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, WatchStream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::super::LeaderError;
use super::{EtcdLeadership, timed};

/// The lease of one campaign and its keep-alive stream.
pub(super) struct Lease {
    pub(super) id: i64,
    pub(super) keeper: LeaseKeeper,
    pub(super) responses: LeaseKeepAliveStream,
}

impl Lease {
    /// Sends one renewal and waits for its answer; `LeaseExpired` if etcd says the lease
    /// is gone.
    pub(super) async fn renew(&mut self) -> Result<(), LeaderError> {
        let id = self.id;
        timed("renew the leader lease", async {
            self.keeper.keep_alive().await?;
            self.responses.message().await
        })
        .await
        .and_then(|answer| match answer {
            Some(answer) if answer.ttl() > 0 => Ok(()),
            _ => Err(LeaderError::LeaseExpired { lease: id }),
        })
    }
}

/// What one renewal round of a term's monitor found.
enum Tended {
    /// The lease was renewed by the request sent at this instant.
    Renewed(Instant),
    /// Nothing was confirmed this round (a failure worth retrying).
    Unconfirmed,
    /// The term is over: the lease expired or the key is gone.
    Lost(&'static str),
}

/// Keeps a term's lease alive and watches its key; cancels `lost` when a renewal has not
/// been acknowledged for 2/3 of the TTL (every renewal round is cut off at that deadline,
/// so a hanging request cannot stretch it), etcd says the lease expired, or the key is
/// deleted or recreated. Returns once `lost` is cancelled (also by `resign`).
pub(super) async fn monitor(
    election: EtcdLeadership,
    mut lease: Lease,
    fencing: i64,
    mut renewed: Instant,
    lost: CancellationToken,
) {
    let margin = election.ttl * 2 / 3;
    let mut tick = tokio::time::interval(election.renew_every());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.reset();
    let task = election.task.as_str();
    let mut watch = tokio::time::timeout_at(renewed + margin, election.watch_from(fencing + 1))
        .await
        .ok()
        .and_then(Result::ok);
    loop {
        let deadline = renewed + margin;
        tokio::select! {
            () = lost.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(task, fencing, "no lease renewal acknowledged in time; leadership lost");
                break;
            }
            _ = tick.tick() => {
                let round = tend(&election, &mut lease, &mut watch, fencing);
                match tokio::time::timeout_at(deadline, round).await {
                    Ok(Tended::Renewed(sent)) => renewed = sent,
                    Ok(Tended::Unconfirmed) => {}
                    Ok(Tended::Lost(why)) => {
                        tracing::warn!(task, fencing, why, "leadership lost");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(task, fencing, "no lease renewal acknowledged in time; leadership lost");
                        break;
                    }
                }
            }
            message = next_message(&mut watch) => match message {
                Some(resp) if resp.canceled() => watch = None,
                Some(resp) => {
                    let changed = resp.events().iter().any(|event| {
                        event.kv().is_none_or(|kv| kv.create_revision() != fencing)
                    });
                    if changed {
                        tracing::warn!(task, fencing, "the leader key was deleted or replaced; leadership lost");
                        break;
                    }
                }
                None => watch = None,
            },
        }
    }
    lost.cancel();
}

/// One renewal round: renews the lease (reopening the keep-alive stream after a failure)
/// and, while there is no watch on the key, reads the key and tries to watch it again.
async fn tend(
    election: &EtcdLeadership,
    lease: &mut Lease,
    watch: &mut Option<WatchStream>,
    fencing: i64,
) -> Tended {
    let sent = Instant::now();
    let outcome = match lease.renew().await {
        Ok(()) => Tended::Renewed(sent),
        Err(LeaderError::LeaseExpired { .. }) => return Tended::Lost("the leader lease expired"),
        Err(e) => {
            tracing::warn!(task = %election.task, fencing, error = %e, "cannot renew the leader lease; retrying");
            let mut client = election.client.clone();
            if let Ok((keeper, responses)) = timed(
                "reopen the lease keep-alive",
                client.lease_keep_alive(lease.id),
            )
            .await
            {
                lease.keeper = keeper;
                lease.responses = responses;
            }
            Tended::Unconfirmed
        }
    };
    if watch.is_none() {
        match election.holder_kv().await {
            Ok(Some((create_revision, holder_lease)))
                if create_revision == fencing && holder_lease == lease.id =>
            {
                *watch = election.watch_from(fencing + 1).await.ok();
            }
            Ok(_) => return Tended::Lost("the leader key is gone or replaced"),
            Err(_) => {}
        }
    }
    outcome
}

/// The next answer of `watch`; `None` (and the caller drops it) when it failed or ended;
/// never completes without a watch.
async fn next_message(watch: &mut Option<WatchStream>) -> Option<etcd_client::WatchResponse> {
    match watch {
        Some(stream) => stream.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}
