//! The origin's side of sharing: an invocation that arrives at a saturated node is offered to
//! the freest of `d` probed peers (up to the policy's `placement_rounds` tries) before it
//! queues here, where idle peers may still steal it. The peer that accepts runs it exactly as
//! a stolen invocation: under a lease, returning the result here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::membership::Peer;
use crate::node::{Node, Task};
use crate::peers::call;
use crate::{convert, pb};

const OFFER_TIMEOUT: Duration = Duration::from_secs(2);

impl Node {
    /// Whether an arrival now would have to wait here: every slot is taken or promised.
    pub(crate) fn saturated(&self) -> bool {
        let taken = self.counters.running.load(Ordering::Relaxed) as usize
            + self.counters.offers_pending.load(Ordering::Relaxed) as usize
            + self.queue.len();
        taken >= self.slots_total
    }

    /// Tries to hand `task` to a peer with room; gives it back if none took it.
    pub(crate) async fn offer_to_peers(&self, mut task: Task) -> Option<Task> {
        // A container image's function runs where its image is (peers do not pull it).
        if task.job.function.image.is_some() {
            return Some(task);
        }
        let m = self.membership.get()?;
        let lease = self.cluster.as_ref().map(|c| c.lease)?;
        for _ in 0..self.policy.placement_rounds.max(1) {
            let peers = m.peers().await;
            if peers.is_empty() || !self.saturated() {
                return Some(task);
            }
            let Some(target) = self.freest_of_probed(&peers).await else {
                continue;
            };
            task.attempt += 1;
            let inv = convert::invocation(
                &task.id,
                task.attempt,
                &self.id,
                &task.job,
                task.mode,
                lease,
            );
            let (id, attempt) = (task.id.clone(), task.attempt);
            // Lent before the offer goes out, so that a quick result finds it here.
            self.ledger.lock().unwrap_or_else(|p| p.into_inner()).lend(
                id.clone(),
                attempt,
                &target.id,
                task,
                Instant::now().into_std(),
            );
            self.counters.offered.fetch_add(1, Ordering::Relaxed);
            let answer = match self.clients.get(&target) {
                Ok(mut c) => call(&target.endpoint, "offer", OFFER_TIMEOUT, c.offer(inv)).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) if r.accepted => {
                    self.counters.lent.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Ok(_) => {
                    // Refused: it filled up since the probe. Take the invocation back.
                    let back = self
                        .ledger
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .complete(&id, attempt, &target.id);
                    match back {
                        Some(t) => task = t,
                        None => return None,
                    }
                }
                Err(e) => {
                    // Unknown whether it arrived: it stays lent, and comes back here when the
                    // lease expires unrenewed. Never queued twice.
                    tracing::debug!(error = %e, "offer failed; the lease decides");
                    self.counters.lent.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        Some(task)
    }

    /// Probes `d` random peers; the one the policy places an arrival on, if any.
    async fn freest_of_probed(&self, peers: &[Peer]) -> Option<Peer> {
        let loads = self.probe_random_peers(peers).await;
        let chosen = self.policy.place(&loads)?;
        peers.get(chosen - 1).cloned()
    }

    /// An offer from `origin`: accepted when this node has room, and then run like a stolen
    /// invocation by the dispatcher.
    pub(crate) async fn accept_offer(self: &Arc<Self>, inv: pb::Invocation) -> bool {
        if self.stopping.load(Ordering::Relaxed) || self.saturated() {
            return false;
        }
        let Some(m) = self.membership.get() else {
            return false;
        };
        let Some(origin) = m.peers().await.into_iter().find(|p| p.id == inv.origin) else {
            return false;
        };
        self.counters.offers_pending.fetch_add(1, Ordering::Relaxed);
        self.counters
            .offers_accepted
            .fetch_add(1, Ordering::Relaxed);
        if self.offers.send((origin, inv)).is_err() {
            self.counters.offers_pending.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}
