//! How a node is configured: its slots, and how it takes part in a cluster.

use std::net::SocketAddr;
use std::time::Duration;

use ignition_scheduler::policy::StealPolicy;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id, unique in its cluster.
    pub node_id: String,
    /// Executions the node runs at once (`--slots`).
    pub slots: usize,
    /// Invocations the node's queue holds at most; past it an invocation is refused
    /// ([`ignition_worker::ExecError::QueueFull`]).
    pub max_queued: usize,
    /// Cluster membership; `None`: a node of its own.
    pub cluster: Option<ClusterConfig>,
}

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Gossip (UDP) and gRPC (TCP) address: bound, and given to peers.
    pub addr: SocketAddr,
    /// Other members' addresses to join through.
    pub peers: Vec<String>,
    /// The cluster's name: nodes of another cluster are ignored.
    pub cluster_id: String,
    /// Whether this node steals when idle (others may still steal from it).
    pub steal: bool,
    /// Peers probed per steal attempt.
    pub probes: usize,
    /// How long a stolen invocation's lease lasts without renewal.
    pub lease: Duration,
    /// Pause after a steal attempt that found nothing; it doubles with each further fruitless
    /// attempt as the policy says (`StealPolicy::pause_factor`).
    pub idle_probe_min: Duration,
    /// Mutual TLS between nodes; `None`: plaintext, for a network only the nodes reach.
    pub tls: Option<ClusterTls>,
}

/// The certificates of mutual TLS between nodes (PEM): every node presents a certificate signed
/// by the cluster's CA for the name [`crate::TLS_SERVER_NAME`], and accepts only peers that do.
#[derive(Clone)]
pub struct ClusterTls {
    /// The cluster's CA certificate.
    pub ca: Vec<u8>,
    /// This node's certificate.
    pub cert: Vec<u8>,
    /// This node's private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls { .. }")
    }
}

impl ClusterConfig {
    /// Defaults for a node at `addr` joining through `peers`.
    pub fn new(addr: SocketAddr, peers: Vec<String>) -> Self {
        Self {
            addr,
            peers,
            cluster_id: "ignition".to_owned(),
            steal: true,
            probes: StealPolicy::default().probes,
            lease: Duration::from_secs(10),
            idle_probe_min: Duration::from_millis(20),
            tls: None,
        }
    }
}
