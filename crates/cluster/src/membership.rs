//! Who is in the cluster and alive: gossip with failure detection, by chitchat.
//!
//! Why chitchat: it is Quickwit's maintained implementation of Scuttlebutt gossip with a phi
//! accrual failure detector, running on tokio over UDP, and it carries a small key-value state
//! per node, where each node puts its gRPC endpoint and nothing else (functions, keys and the
//! other records are in the shared store). No node is special: any member can be a seed, a new
//! node needs one address, and a dead node's state disappears with it. Gossip is not
//! authenticated: an endpoint it gives is used only once the node there proves its identity
//! over mutual TLS (see [`crate::identity`]).
//!
//! Gossip runs on UDP on the node's cluster address; gRPC on TCP on the same address and port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};

use crate::ClusterError;

/// The key holding a node's gRPC endpoint.
const GRPC_KEY: &str = "grpc";

/// How often a node gossips with a few others.
const GOSSIP_INTERVAL: Duration = Duration::from_millis(250);

/// A live peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id.
    pub id: String,
    /// Its gRPC endpoint, `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoint: String,
}

/// This node's membership.
pub(crate) struct Membership {
    handle: ChitchatHandle,
    me: String,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("me", &self.me).finish()
    }
}

impl Membership {
    /// Joins (or founds) the cluster `cluster_id` as `node_id`, gossiping on `addr` with
    /// `seeds` (other members' cluster addresses, `HOST:PORT`).
    pub(crate) async fn join(
        cluster_id: &str,
        node_id: &str,
        addr: SocketAddr,
        scheme: &str,
        seeds: &[String],
    ) -> Result<Self, ClusterError> {
        // A restarted node is a new generation: peers drop what its predecessor said.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node_id.to_owned(), generation, addr),
            cluster_id: cluster_id.to_owned(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: addr,
            seed_nodes: seeds.to_vec(),
            failure_detector_config: FailureDetectorConfig {
                initial_interval: GOSSIP_INTERVAL,
                dead_node_grace_period: Duration::from_secs(3600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let kvs = vec![(GRPC_KEY.to_owned(), format!("{scheme}://{addr}"))];
        let handle = spawn_chitchat(config, kvs, &UdpTransport)
            .await
            .map_err(|e| ClusterError::Gossip(format!("{e:#}")))?;
        Ok(Self {
            handle,
            me: node_id.to_owned(),
        })
    }

    /// Live peers (not this node) that said where their gRPC endpoint is.
    pub(crate) async fn peers(&self) -> Vec<Peer> {
        let chitchat = self.handle.chitchat();
        let c = chitchat.lock().await;
        // A restarted peer may linger as two generations for a while: the newest is it.
        let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for id in c.live_nodes().filter(|id| *id.node_id != *self.me) {
            let Some(endpoint) = c.node_state(id).and_then(|s| s.get(GRPC_KEY)) else {
                continue;
            };
            let entry = newest
                .entry(id.node_id.to_string())
                .or_insert((0, String::new()));
            if id.generation_id >= entry.0 {
                *entry = (id.generation_id, endpoint.to_owned());
            }
        }
        newest
            .into_iter()
            .map(|(id, (_, endpoint))| Peer { id, endpoint })
            .collect()
    }

    /// Leaves: stops gossiping (peers see this node die).
    pub(crate) fn leave(&self) {
        if let Err(e) = self.handle.initiate_shutdown() {
            tracing::debug!(error = %e, "gossip did not stop cleanly");
        }
    }
}
