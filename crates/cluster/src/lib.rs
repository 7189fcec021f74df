//! A node of an Ignition cluster.
//!
//! Every node owns a queue of invocations that have not started ([`queue`]: first in, first
//! out within a tenant, tenants in turn) and a number of slots (`--slots`). A free slot takes
//! the next queued invocation; when the queue is empty, the node probes `d` random live peers and takes
//! up to half of the most loaded one's queue (the policy is `ignition_scheduler::policy`, the
//! same code the simulator runs). There is no central queue and no leader.
//!
//! An invocation keeps its origin, the node that accepted it and holds its caller's request.
//! A thief holds a stolen invocation under a lease that it renews while it runs it, and
//! returns the result to the origin, which answers the caller; an unrenewed lease goes back to
//! the origin's queue as a new attempt ([`ledger`] has the rules, and why one invocation never
//! runs twice at once).
//!
//! Membership and failure detection are gossip (chitchat, see [`membership`]); everything
//! else between nodes is gRPC (tonic; `proto/cluster.proto`), on mutual TLS where each
//! certificate names its node ([`identity`]). Functions, keys and the other
//! records are not sent between nodes: the nodes share one store (PostgreSQL).

mod bundles;
mod config;
mod convert;
mod identity;
mod ledger;
mod membership;
mod node;
mod peers;
mod queue;
mod service;
mod share;
mod stats;
mod steal;

/// The generated gRPC messages and service.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("ignition.cluster.v1");
}

pub use config::{ClusterConfig, ClusterTls, NodeConfig};
pub use identity::{
    check_own_certificate, make_certs, node_tls_name, validate_node_id, ClusterCerts, MAX_NODE_ID,
};
pub use membership::Peer;
pub use node::{Node, Ran};
pub use stats::{NodeStats, PeerStats};

/// The largest message between nodes: a bundle (250 MiB expanded, as Lambda's limit) or a
/// 6 MiB event, with room to spare.
pub(crate) const MAX_MESSAGE: usize = 272 * 1024 * 1024;

/// What can go wrong between nodes.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, #[source] std::io::Error),
    /// Gossip could not start.
    #[error("gossip: {0}")]
    Gossip(String),
    /// A peer failed, did not answer in time, or answered nonsense.
    #[error("peer: {0}")]
    Peer(String),
    /// The local store failed.
    #[error("store: {0}")]
    Store(String),
    /// The TLS certificates are unusable.
    #[error("cluster TLS: {0}")]
    Tls(String),
}
