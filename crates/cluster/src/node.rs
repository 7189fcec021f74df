//! A node: its queue of invocations, its slots, and the loop that feeds the slots from the
//! queue, or, when the queue is empty, from other nodes' queues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignition_scheduler::policy::StealPolicy;
use ignition_store::Store;
use ignition_worker::{ExecError, Execution, Job, StartMode, Worker};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::bundles::BundleCache;
use crate::config::{ClusterConfig, NodeConfig};
use crate::ledger::Ledger;
use crate::membership::{Membership, Peer};
use crate::peers::Clients;
use crate::queue::LocalQueue;
use crate::stats::{Counters, NodeStats};
use crate::{pb, ClusterError};

/// Hand-overs of one invocation before the origin gives up on it.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// Bytes of stolen invocations' bundles a node keeps.
const BUNDLE_CACHE_BYTES: usize = 512 * 1024 * 1024;

/// How an invocation ended and the node where it did: the node whose VM ran it, or, when it
/// failed before any did, the node that gave up on it.
#[derive(Debug)]
pub struct Ran {
    /// What happened.
    pub outcome: Result<Execution, ExecError>,
    /// Where.
    pub node: String,
}

/// An invocation accepted here, waiting for a slot here or elsewhere.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) id: String,
    /// Hand-overs so far.
    pub(crate) attempt: u32,
    pub(crate) job: Job,
    pub(crate) mode: StartMode,
    pub(crate) enqueued: Instant,
    pub(crate) reply: oneshot::Sender<Ran>,
}

impl Task {
    /// Whose invocation it is: the queue serves tenants in turn.
    pub(crate) fn tenant(&self) -> String {
        ignition_types::FunctionId::from_stored(&self.job.function.name).tenant
    }
}

/// Stolen invocations running here, by (origin, id).
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) attempt: u32,
    pub(crate) endpoint: String,
    pub(crate) renewed: Instant,
    pub(crate) abort: Option<tokio::task::AbortHandle>,
}

/// One node.
#[derive(Debug)]
pub struct Node {
    pub(crate) id: String,
    pub(crate) worker: Arc<Worker>,
    pub(crate) store: Arc<Store>,
    pub(crate) slots_total: usize,
    pub(crate) slots: Arc<Semaphore>,
    /// Invocations the queue holds at most.
    pub(crate) max_queued: usize,
    pub(crate) queue: LocalQueue<Task>,
    pub(crate) ledger: Mutex<Ledger<Task>>,
    pub(crate) held: Mutex<HashMap<(String, String), Held>>,
    pub(crate) policy: StealPolicy,
    pub(crate) cluster: Option<ClusterConfig>,
    pub(crate) membership: tokio::sync::OnceCell<Membership>,
    pub(crate) clients: Clients,
    pub(crate) bundles: BundleCache,
    pub(crate) counters: Counters,
    pub(crate) stopping: AtomicBool,
    pub(crate) stop: tokio::sync::Notify,
    /// Offers this node accepted, for the dispatcher to start.
    pub(crate) offers: mpsc::UnboundedSender<(Peer, pb::Invocation)>,
    offers_in: Mutex<Option<mpsc::UnboundedReceiver<(Peer, pb::Invocation)>>>,
}

impl Node {
    /// Starts the node: its dispatcher and, in a cluster, its gRPC service, gossip and lease
    /// keeping.
    pub async fn start(
        config: NodeConfig,
        worker: Arc<Worker>,
        store: Arc<Store>,
    ) -> Result<Arc<Self>, ClusterError> {
        let slots = config.slots.max(1);
        let (offers, offers_in) = mpsc::unbounded_channel();
        let lease = config
            .cluster
            .as_ref()
            .map_or(Duration::from_secs(10), |c| c.lease);
        let node = Arc::new(Self {
            id: config.node_id.clone(),
            worker,
            store,
            slots_total: slots,
            slots: Arc::new(Semaphore::new(slots)),
            max_queued: config.max_queued.max(1),
            queue: LocalQueue::default(),
            ledger: Mutex::new(Ledger::new(lease)),
            held: Mutex::new(HashMap::new()),
            policy: StealPolicy {
                probes: config.cluster.as_ref().map_or(2, |c| c.probes.max(1)),
                // A node that does not steal does not push its work onto others either.
                share_on_arrival: config.cluster.as_ref().is_some_and(|c| c.steal),
                ..StealPolicy::default()
            },
            cluster: config.cluster.clone(),
            membership: tokio::sync::OnceCell::new(),
            clients: Clients::new(config.cluster.as_ref().and_then(|c| c.tls.clone())),
            bundles: BundleCache::new(BUNDLE_CACHE_BYTES),
            counters: Counters::default(),
            stopping: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
            offers,
            offers_in: Mutex::new(Some(offers_in)),
        });
        if let Some(c) = &config.cluster {
            crate::service::serve(Arc::clone(&node), c.addr).await?;
            let scheme = if c.tls.is_some() { "https" } else { "http" };
            let m = Membership::join(&c.cluster_id, &node.id, c.addr, scheme, &c.peers).await?;
            let _ = node.membership.set(m);
            tokio::spawn(Arc::clone(&node).keep_leases());
            tokio::spawn(crate::steal::give_up_unrenewed(Arc::clone(&node), c.lease));
            tracing::info!(node = %node.id, addr = %c.addr, peers = ?c.peers, steal = c.steal, "joined the cluster");
        }
        tokio::spawn(Arc::clone(&node).dispatch());
        Ok(node)
    }

    /// This node's id.
    /// The addresses of the live peers' cluster endpoints (what VMs must never reach).
    pub async fn peer_addresses(&self) -> Vec<std::net::IpAddr> {
        let Some(m) = self.membership.get() else {
            return Vec::new();
        };
        let mut addrs = Vec::new();
        for p in m.peers().await {
            let hostport = p
                .endpoint
                .split_once("://")
                .map_or(p.endpoint.as_str(), |(_, rest)| rest);
            if let Ok(found) = tokio::net::lookup_host(hostport).await {
                addrs.extend(found.map(|a| a.ip()));
            }
        }
        addrs
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs `job` here or, if another node is idle first, there; answers when it finished.
    pub async fn run(&self, job: Job, mode: StartMode) -> Ran {
        if self.stopping.load(Ordering::Relaxed) {
            return self.failed(ExecError::ShuttingDown);
        }
        if self.queue.len() >= self.max_queued {
            self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            return self.failed(ExecError::QueueFull(self.max_queued));
        }
        let (reply, answer) = oneshot::channel();
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            attempt: 0,
            job,
            mode,
            enqueued: Instant::now(),
            reply,
        };
        let task = if self.policy.share_on_arrival && self.saturated() {
            self.offer_to_peers(task).await
        } else {
            Some(task)
        };
        if let Some(task) = task {
            self.queue.push(&task.tenant(), task);
        }
        answer
            .await
            .unwrap_or_else(|_| self.failed(ExecError::ShuttingDown))
    }

    /// `error`, from this node.
    pub(crate) fn failed(&self, error: ExecError) -> Ran {
        Ran {
            outcome: Err(error),
            node: self.id.clone(),
        }
    }

    /// Every live peer's load and counters, probed now (empty outside a cluster).
    pub async fn peer_stats(&self) -> Vec<crate::PeerStats> {
        let Some(m) = self.membership.get() else {
            return Vec::new();
        };
        let peers = m.peers().await;
        self.probe_every_peer(&peers).await
    }

    /// The node's counters.
    pub async fn stats(&self) -> NodeStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut members: Vec<String> = match self.membership.get() {
            Some(m) => m.peers().await.into_iter().map(|p| p.id).collect(),
            None => Vec::new(),
        };
        members.sort();
        NodeStats {
            node: self.id.clone(),
            slots: self.slots_total,
            busy: usize::try_from(get(&c.running)).unwrap_or(usize::MAX),
            queued: self.queue.len(),
            lent_now: self.ledger.lock().unwrap_or_else(|p| p.into_inner()).len(),
            peers: members.len(),
            members,
            accepted: get(&c.accepted),
            ran_local: get(&c.ran_local),
            ran_stolen: get(&c.ran_stolen),
            lent: get(&c.lent),
            offered: get(&c.offered),
            offers_accepted: get(&c.offers_accepted),
            returned: get(&c.returned),
            reclaimed: get(&c.reclaimed),
            abandoned: get(&c.abandoned),
            probes: get(&c.probes),
            steal_requests: get(&c.steal_requests),
            stolen: get(&c.stolen),
            lease_lost: get(&c.lease_lost),
            results_lost: get(&c.results_lost),
            bundles_fetched: get(&c.bundles_fetched),
            callers_gone: get(&c.callers_gone),
            queue_full: get(&c.queue_full),
        }
    }

    /// Stops taking work: queued invocations fail with "shutting down", lent ones are no
    /// longer waited for, and the node leaves the cluster.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.notify_waiters();
        let lent = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain();
        for t in lent
            .into_iter()
            .chain(std::iter::from_fn(|| self.queue.pop()))
        {
            let _ = t.reply.send(self.failed(ExecError::ShuttingDown));
        }
        let held: Vec<_> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .filter_map(|(_, h)| h.abort)
            .collect();
        for a in held {
            a.abort();
        }
        if let Some(m) = self.membership.get() {
            m.leave();
        }
    }

    /// Slots free for an arrival or an offer now.
    pub(crate) fn free_slots(&self) -> usize {
        let taken = self.counters.running.load(Ordering::Relaxed)
            + self.counters.offers_pending.load(Ordering::Relaxed);
        self.slots_total
            .saturating_sub(usize::try_from(taken).unwrap_or(usize::MAX))
    }

    /// Feeds slots: a free slot takes an offer this node accepted, else the oldest local
    /// invocation, or, with none, steals.
    async fn dispatch(self: Arc<Self>) {
        let Some(mut offers) = self
            .offers_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        // After `fruitless` steal attempts in a row found nothing, the next waits
        // `idle_probe_min x policy.pause_factor(fruitless)` (the simulator's rule too). A node
        // that does not steal has nothing to do until work arrives or it stops.
        let mut fruitless = 0u32;
        let pause = |fruitless: u32| match &self.cluster {
            Some(c) if c.steal => c.idle_probe_min * self.policy.pause_factor(fruitless),
            _ => Duration::from_secs(3600),
        };
        loop {
            let Ok(mut permit) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            loop {
                if self.stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok((origin, inv)) = offers.try_recv() {
                    self.counters.offers_pending.fetch_sub(1, Ordering::Relaxed);
                    tokio::spawn(Arc::clone(&self).run_stolen(origin, inv, permit));
                    break;
                }
                if let Some(task) = self.queue.pop() {
                    if task.reply.is_closed() {
                        // Its caller went away while it waited (a client that disconnected):
                        // nobody would read the result, so it does not take a VM.
                        self.counters.callers_gone.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    tokio::spawn(Arc::clone(&self).run_local(task, permit));
                    break;
                }
                let free = 1 + self.slots.available_permits();
                let stealing = self.cluster.as_ref().is_some_and(|c| c.steal);
                if stealing && self.policy.wants_work(free, self.queue.len()) {
                    match Arc::clone(&self).steal_and_start(free, permit).await {
                        Ok(()) => {
                            fruitless = 0;
                            break;
                        }
                        Err(p) => {
                            permit = p;
                            fruitless = fruitless.saturating_add(1);
                        }
                    }
                }
                tokio::select! {
                    () = self.queue.pushed() => {}
                    Some((origin, inv)) = offers.recv() => {
                        self.counters.offers_pending.fetch_sub(1, Ordering::Relaxed);
                        tokio::spawn(Arc::clone(&self).run_stolen(origin, inv, permit));
                        break;
                    }
                    () = tokio::time::sleep(pause(fruitless)) => {}
                    () = self.stop.notified() => return,
                }
            }
        }
    }

    /// One steal attempt for `free` slots, `permit` being one of them: starts what it took
    /// (`Ok`), or gives the permit back when it took nothing.
    async fn steal_and_start(
        self: Arc<Self>,
        free: usize,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), OwnedSemaphorePermit> {
        let mut stolen = match self.steal(free).await {
            Ok(stolen) if !stolen.is_empty() => stolen,
            Ok(_) => return Err(permit),
            Err(e) => {
                tracing::debug!(error = %e, "steal attempt failed");
                return Err(permit);
            }
        };
        let (origin, first) = stolen.remove(0);
        tokio::spawn(Arc::clone(&self).run_stolen(origin, first, permit));
        for (origin, inv) in stolen {
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(p) => {
                    tokio::spawn(Arc::clone(&self).run_stolen(origin, inv, p));
                }
                // Only the dispatcher takes slots, so the free ones counted before the steal
                // are still free; this is a guard, not a path.
                Err(_) => {
                    tracing::warn!(id = %inv.id, "no slot for a stolen invocation; its lease will expire");
                }
            }
        }
        Ok(())
    }

    /// Runs one of this node's invocations here.
    async fn run_local(self: Arc<Self>, task: Task, permit: OwnedSemaphorePermit) {
        let waited = ms(task.enqueued.elapsed());
        self.counters.running.fetch_add(1, Ordering::Relaxed);
        let out = self.worker.run(task.job, task.mode).await;
        self.counters.running.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        self.counters.ran_local.fetch_add(1, Ordering::Relaxed);
        let _ = task.reply.send(Ran {
            outcome: out.map(|mut execution| {
                execution.timings.queued_ms += waited;
                execution.timings.total_ms += waited;
                execution
            }),
            node: self.id.clone(),
        });
    }

    /// Takes back leases that expired: the invocation is queued again as a new attempt, or
    /// fails after [`MAX_ATTEMPTS`]. Also renews the leases of invocations stolen by this node.
    async fn keep_leases(self: Arc<Self>) {
        let lease = self
            .cluster
            .as_ref()
            .map_or(Duration::from_secs(10), |c| c.lease);
        let mut tick = tokio::time::interval(lease / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.stop.notified() => return,
            }
            let expired = self
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .expired(Instant::now().into_std());
            for (id, attempt, thief, task) in expired {
                if task.attempt >= MAX_ATTEMPTS {
                    self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%id, attempt, %thief, "invocation abandoned: its lease expired on its last attempt");
                    let _ = task.reply.send(self.failed(ExecError::Cluster(format!(
                        "the invocation was handed to other nodes {attempt} times and none returned a result (last: {thief})"
                    ))));
                } else {
                    self.counters.reclaimed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%id, attempt, %thief, "lease expired; the invocation is queued again");
                    self.queue.push(&task.tenant(), task);
                }
            }
            crate::steal::renew_held(&self, lease).await;
        }
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
