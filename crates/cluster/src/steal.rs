//! The thief's side: probing peers, taking their queued invocations, running them, renewing
//! their leases, and returning each result to the invocation's origin.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ignition_scheduler::policy::PeerLoad;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::membership::Peer;
use crate::node::{Held, Node};
use crate::peers::call;
use crate::{convert, pb, ClusterError};

/// How long a probe may take: a slow peer is a busy peer, not worth waiting for.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the hand-over itself may take.
const STEAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long fetching a bundle may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries to return a result before giving up on it (the origin then reclaims the lease).
const COMPLETE_TRIES: u32 = 3;

impl Node {
    /// One steal attempt with `free` slots: probe `d` random live peers, then ask the most
    /// loaded for up to half its queue. Returns the invocations taken, with their origin.
    pub(crate) async fn steal(
        self: &Arc<Self>,
        free: usize,
    ) -> Result<Vec<(Peer, pb::Invocation)>, ClusterError> {
        let Some(m) = self.membership.get() else {
            return Ok(Vec::new());
        };
        let peers = m.peers().await;
        if peers.is_empty() {
            return Ok(Vec::new());
        }
        let loads = self.probe_random_peers(&peers).await;
        let Some((victim, n)) = self.policy.choose_victim(&loads, free) else {
            return Ok(Vec::new());
        };
        let Some(peer) = peers.get(victim - 1).cloned() else {
            return Ok(Vec::new());
        };
        let mut client = self.clients.get(&peer)?;
        self.counters.steal_requests.fetch_add(1, Ordering::Relaxed);
        let reply = call(
            &peer.endpoint,
            "steal",
            STEAL_TIMEOUT,
            client.steal(pb::StealRequest {
                thief: self.id.clone(),
                max: u32::try_from(n).unwrap_or(u32::MAX),
            }),
        )
        .await?;
        // A peer that hands over more than asked is wrong; its leases on the excess expire.
        let taken: Vec<_> = reply.invocations.into_iter().take(n).collect();
        self.counters
            .stolen
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        if !taken.is_empty() {
            tracing::debug!(from = %peer.id, n = taken.len(), "stole invocations");
        }
        Ok(taken.into_iter().map(|i| (peer.clone(), i)).collect())
    }

    /// Probes `d` random peers of `peers` at once: what each that answered in time has.
    /// `PeerLoad::node` is the peer's index in `peers` plus one (0 is this node, as the policy
    /// numbers a cluster).
    pub(crate) async fn probe_random_peers(&self, peers: &[Peer]) -> Vec<PeerLoad> {
        let picked = {
            let mut rng = rand::thread_rng();
            self.policy.pick_peers(0, peers.len() + 1, &mut rng)
        };
        let mut probes = tokio::task::JoinSet::new();
        for i in picked {
            let Some(peer) = peers.get(i - 1) else {
                continue;
            };
            let Ok(mut client) = self.clients.get(peer) else {
                continue;
            };
            let (endpoint, from) = (peer.endpoint.clone(), self.id.clone());
            self.counters.probes.fetch_add(1, Ordering::Relaxed);
            probes.spawn(async move {
                let request = client.probe(pb::ProbeRequest { from });
                (i, call(&endpoint, "probe", PROBE_TIMEOUT, request).await)
            });
        }
        let mut loads = Vec::new();
        while let Some(done) = probes.join_next().await {
            if let Ok((node, Ok(reply))) = done {
                loads.push(PeerLoad {
                    node,
                    queued: reply.queued as usize,
                    free: reply.free_slots as usize,
                });
            }
        }
        loads
    }

    /// Probes every peer of `peers` at once, for an operator's view (not counted as probes:
    /// it is not the scheduler's); a peer that does not answer in time is unreachable.
    pub(crate) async fn probe_every_peer(&self, peers: &[Peer]) -> Vec<crate::PeerStats> {
        let mut probes = tokio::task::JoinSet::new();
        for peer in peers {
            let id = peer.id.clone();
            let Ok(mut client) = self.clients.get(peer) else {
                probes.spawn(async move { (id, None) });
                continue;
            };
            let (endpoint, from) = (peer.endpoint.clone(), self.id.clone());
            probes.spawn(async move {
                let request = client.probe(pb::ProbeRequest { from });
                (
                    id,
                    call(&endpoint, "probe", PROBE_TIMEOUT, request).await.ok(),
                )
            });
        }
        let mut stats = Vec::new();
        while let Some(done) = probes.join_next().await {
            let Ok((node, reply)) = done else { continue };
            stats.push(match reply {
                Some(r) => crate::PeerStats {
                    node,
                    reachable: true,
                    slots: r.slots,
                    busy: r.busy,
                    queued: r.queued,
                    stolen: r.stolen,
                    ran_stolen: r.ran_stolen,
                    lent: r.lent,
                },
                None => crate::PeerStats {
                    node,
                    ..Default::default()
                },
            });
        }
        stats.sort_by(|a, b| a.node.cmp(&b.node));
        stats
    }

    /// Runs an invocation taken from `origin`, holding its lease, and returns the result.
    pub(crate) async fn run_stolen(
        self: Arc<Self>,
        origin: Peer,
        inv: pb::Invocation,
        permit: OwnedSemaphorePermit,
    ) {
        let key = (origin.id.clone(), inv.id.clone());
        let me = Arc::clone(&self);
        let (o, i) = (origin.clone(), inv.clone());
        let execution = tokio::spawn(async move { me.execute_stolen(&o, &i).await });
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key.clone(),
            Held {
                attempt: inv.attempt,
                endpoint: origin.endpoint.clone(),
                renewed: Instant::now(),
                abort: Some(execution.abort_handle()),
            },
        );
        self.counters.running.fetch_add(1, Ordering::Relaxed);
        let outcome = execution.await;
        self.counters.running.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        let still_held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .is_some();
        let outcome = match outcome {
            Ok(o) => o,
            Err(_) => {
                // Aborted: the lease was lost, the origin runs it again or already answered.
                self.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id = %inv.id, origin = %origin.id, "stolen invocation stopped: its lease could not be renewed");
                return;
            }
        };
        if !still_held {
            return;
        }
        self.counters.ran_stolen.fetch_add(1, Ordering::Relaxed);
        let request = pb::CompleteRequest {
            id: inv.id.clone(),
            attempt: inv.attempt,
            executor: self.id.clone(),
            result: Some(convert::result(&outcome)),
        };
        for n in 1..=COMPLETE_TRIES {
            let sent = match self.clients.get(&origin) {
                Ok(mut c) => {
                    call(
                        &origin.endpoint,
                        "complete",
                        STEAL_TIMEOUT,
                        c.complete(request.clone()),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(r) => {
                    if !r.accepted {
                        tracing::info!(id = %inv.id, origin = %origin.id, "origin no longer waited for this attempt");
                    }
                    return;
                }
                Err(e) if n == COMPLETE_TRIES => {
                    self.counters.results_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id = %inv.id, origin = %origin.id, error = %e, "cannot return the result; the origin's lease will expire");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The stolen invocation's code (local store, cache, or fetched from its origin) and run.
    async fn execute_stolen(
        &self,
        origin: &Peer,
        inv: &pb::Invocation,
    ) -> Result<ignition_worker::Execution, ignition_worker::ExecError> {
        let hash = inv
            .function
            .as_ref()
            .map(|f| f.code_sha256.clone())
            .unwrap_or_default();
        let code = self
            .bundle(origin, &hash)
            .await
            .map_err(|e| ignition_worker::ExecError::Cluster(e.to_string()))?;
        let mut layers = Vec::new();
        for h in inv.function.iter().flat_map(|f| &f.layer_sha256) {
            layers.push(
                self.bundle(origin, h)
                    .await
                    .map_err(|e| ignition_worker::ExecError::Cluster(e.to_string()))?,
            );
        }
        let (job, mode) = convert::job(inv, code, layers).map_err(|e| {
            ignition_worker::ExecError::Cluster(format!("invocation from {}: {e}", origin.id))
        })?;
        self.worker.run(job, mode).await
    }

    /// The bundle `sha256`: from the store, the cache, or `from`.
    pub(crate) async fn bundle(&self, from: &Peer, sha256: &str) -> Result<Vec<u8>, ClusterError> {
        let store = Arc::clone(&self.store);
        let h = sha256.to_owned();
        if let Ok(Ok(Some(tar))) = tokio::task::spawn_blocking(move || store.get_bundle(&h)).await {
            return Ok(tar);
        }
        if let Some(tar) = self.bundles.get(sha256) {
            return Ok(tar.as_ref().clone());
        }
        let mut client = self.clients.get(from)?;
        let reply = call(
            &from.endpoint,
            "fetch bundle",
            FETCH_TIMEOUT,
            client.fetch_bundle(pb::BundleRequest {
                sha256: sha256.to_owned(),
            }),
        )
        .await?;
        self.counters
            .bundles_fetched
            .fetch_add(1, Ordering::Relaxed);
        self.bundles
            .put_checked(sha256, reply.tar)
            .map(|t| t.as_ref().clone())
            .ok_or_else(|| {
                ClusterError::Peer(format!(
                    "{} sent a bundle that does not match {sha256}",
                    from.id
                ))
            })
    }
}

/// Renews the leases of the invocations this node stole, origin by origin, and stops those
/// whose origin reclaimed them or whose lease could not be renewed in time.
pub(crate) async fn renew_held(node: &Arc<Node>, lease: Duration) {
    /// (origin, id, attempt)
    type HeldRef = (String, String, u32);
    let by_origin: Vec<(Peer, Vec<HeldRef>)> = {
        let held = node.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut map: std::collections::BTreeMap<(String, String), Vec<HeldRef>> =
            std::collections::BTreeMap::new();
        for ((origin, id), h) in held.iter() {
            let key = (origin.clone(), h.endpoint.clone());
            map.entry(key)
                .or_default()
                .push((origin.clone(), id.clone(), h.attempt));
        }
        map.into_iter()
            .map(|((id, endpoint), items)| (Peer { id, endpoint }, items))
            .collect()
    };
    // Every origin at once: one slow origin must not delay the others' renewals.
    let mut renewals = tokio::task::JoinSet::new();
    for (origin, items) in by_origin {
        let request = pb::RenewRequest {
            thief: node.id.clone(),
            held: items
                .iter()
                .map(|(_, id, attempt)| pb::Held {
                    id: id.clone(),
                    attempt: *attempt,
                })
                .collect(),
        };
        let client = node.clients.get(&origin);
        let endpoint = origin.endpoint;
        renewals.spawn(async move {
            let reply = match client {
                Ok(mut c) => call(&endpoint, "renew", lease / 4, c.renew(request)).await,
                Err(e) => Err(e),
            };
            (items, reply)
        });
    }
    while let Some(done) = renewals.join_next().await {
        let reply = match done {
            Ok((items, Ok(reply))) => (items, reply),
            Ok((_, Err(e))) => {
                tracing::debug!(error = %e, "lease renewal failed");
                continue;
            }
            Err(_) => continue,
        };
        let (items, reply) = reply;
        tracing::debug!(n = items.len(), leased = ?reply.leased, "leases renewed");
        let now = Instant::now();
        let mut held = node.held.lock().unwrap_or_else(|p| p.into_inner());
        for ((origin, id, _), leased) in items.iter().zip(reply.leased) {
            let key = (origin.clone(), id.clone());
            if leased {
                if let Some(h) = held.get_mut(&key) {
                    h.renewed = now;
                }
            } else if let Some(h) = held.remove(&key) {
                if let Some(a) = h.abort {
                    a.abort();
                }
            }
        }
    }
}

/// Stops stolen invocations whose lease was not renewed for three quarters of it: a quarter
/// lease before the origin would reclaim, so the attempt has ended before a new one can start.
/// Its own timer, apart from the renewals, so a slow origin cannot delay it.
pub(crate) async fn give_up_unrenewed(node: Arc<Node>, lease: Duration) {
    let give_up = lease - lease / 4;
    let mut tick = tokio::time::interval(lease / 16);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = node.stop.notified() => return,
        }
        let now = Instant::now();
        let mut held = node.held.lock().unwrap_or_else(|p| p.into_inner());
        for h in held.values_mut() {
            if now.duration_since(h.renewed) > give_up {
                if let Some(a) = h.abort.take() {
                    a.abort();
                }
            }
        }
    }
}
