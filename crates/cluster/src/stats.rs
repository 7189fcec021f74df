//! What a node counts, and what it reports of itself.

use std::sync::atomic::AtomicU64;

/// Counters since the node started.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) offers_pending: AtomicU64,
    pub(crate) offered: AtomicU64,
    pub(crate) offers_accepted: AtomicU64,
    pub(crate) ran_local: AtomicU64,
    pub(crate) ran_stolen: AtomicU64,
    pub(crate) lent: AtomicU64,
    pub(crate) returned: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) steal_requests: AtomicU64,
    pub(crate) stolen: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) results_lost: AtomicU64,
    pub(crate) bundles_fetched: AtomicU64,
    pub(crate) callers_gone: AtomicU64,
    pub(crate) queue_full: AtomicU64,
}

/// What `/v1/stats` and `/metrics` show of a node.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeStats {
    /// The node's id.
    pub node: String,
    /// Its slots.
    pub slots: usize,
    /// Slots running an execution now.
    pub busy: usize,
    /// Invocations queued here, not started.
    pub queued: usize,
    /// Invocations of this node lent to thieves, running there now.
    pub lent_now: usize,
    /// Live peers (0 outside a cluster).
    pub peers: usize,
    /// Their ids, sorted.
    pub members: Vec<String>,
    /// Invocations accepted by this node.
    pub accepted: u64,
    /// Of those, run here.
    pub ran_local: u64,
    /// Invocations of other nodes run here.
    pub ran_stolen: u64,
    /// Invocations handed to thieves or to peers that took an offer (attempts).
    pub lent: u64,
    /// Arrivals offered to a peer because this node was saturated.
    pub offered: u64,
    /// Offers from peers this node took.
    pub offers_accepted: u64,
    /// Results thieves returned.
    pub returned: u64,
    /// Leases that expired unrenewed; the invocation was queued again.
    pub reclaimed: u64,
    /// Invocations failed after their last attempt's lease expired.
    pub abandoned: u64,
    /// Probes sent.
    pub probes: u64,
    /// Steal requests sent.
    pub steal_requests: u64,
    /// Invocations taken from other nodes.
    pub stolen: u64,
    /// Stolen invocations stopped because their lease could not be renewed.
    pub lease_lost: u64,
    /// Results that could not be returned to their origin.
    pub results_lost: u64,
    /// Bundles fetched from peers.
    pub bundles_fetched: u64,
    /// Queued invocations dropped unrun because their caller had gone.
    pub callers_gone: u64,
    /// Invocations refused because the queue held its limit.
    pub queue_full: u64,
}

/// A peer as an operator's view of the cluster shows it: what its probe answered.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's id.
    pub node: String,
    /// Whether it answered the probe in time (the rest is zero when it did not).
    pub reachable: bool,
    /// Its slots.
    pub slots: u32,
    /// Slots running an execution now.
    pub busy: u32,
    /// Invocations queued there.
    pub queued: u32,
    /// Invocations it took from other nodes.
    pub stolen: u64,
    /// Invocations of other nodes it ran.
    pub ran_stolen: u64,
    /// Invocations it handed to other nodes.
    pub lent: u64,
}
