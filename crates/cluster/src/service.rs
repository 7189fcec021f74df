//! The gRPC service every node of a cluster runs: the victim's and the origin's side of
//! stealing and sharing, and the code a peer may need; on mutual TLS, each call made on a
//! node's behalf checked against the caller's certificate.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::pb::node_server::{Node as NodeService, NodeServer};
use crate::{convert, pb, ClusterError, MAX_MESSAGE};

/// The service of one node.
#[derive(Debug)]
struct Service {
    node: Arc<Node>,
}

/// Serves `node` on `addr` (TCP) until the node stops.
pub(crate) async fn serve(node: Arc<Node>, addr: SocketAddr) -> Result<(), ClusterError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ClusterError::Bind(addr, e))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let tls = node.cluster.as_ref().and_then(|c| c.tls.as_ref()).map(|t| {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&t.cert, &t.key))
            .client_ca_root(Certificate::from_pem(&t.ca))
    });
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
    }
    let service = NodeServer::new(Service {
        node: Arc::clone(&node),
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    tokio::spawn(async move {
        let stop = async move {
            while !node.stopping.load(Ordering::Relaxed) {
                node.stop.notified().await;
            }
        };
        let served = builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the cluster service stopped");
        }
    });
    Ok(())
}

impl Service {
    /// Whether a call made on behalf of node `claimed` may be: on mutual TLS only when the
    /// caller's certificate names that node (see [`crate::identity`]); without TLS every
    /// caller is taken at its word (a network only the nodes reach).
    fn speaks_for<T>(&self, r: &Request<T>, claimed: &str) -> bool {
        if self.node.cluster.as_ref().is_none_or(|c| c.tls.is_none()) {
            return true;
        }
        r.peer_certs()
            .and_then(|certs| certs.first().cloned())
            .is_some_and(|leaf| crate::identity::names_node(&leaf, claimed))
    }
}

/// The answer to a call made on behalf of a node whose certificate the caller does not hold.
fn not_that_node(claimed: &str) -> Status {
    Status::permission_denied(format!(
        "the caller's certificate is not node {claimed:?}'s"
    ))
}

#[tonic::async_trait]
impl NodeService for Service {
    async fn probe(
        &self,
        _: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeReply>, Status> {
        let n = &self.node;
        let c = &n.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Ok(Response::new(pb::ProbeReply {
            node: n.id.clone(),
            queued: u32::try_from(n.queue.len()).unwrap_or(u32::MAX),
            free_slots: u32::try_from(n.free_slots()).unwrap_or(u32::MAX),
            slots: u32::try_from(n.slots_total).unwrap_or(u32::MAX),
            busy: u32::try_from(get(&c.running)).unwrap_or(u32::MAX),
            stolen: get(&c.stolen),
            ran_stolen: get(&c.ran_stolen),
            lent: get(&c.lent),
        }))
    }

    async fn steal(
        &self,
        r: Request<pb::StealRequest>,
    ) -> Result<Response<pb::StealReply>, Status> {
        if !self.speaks_for(&r, &r.get_ref().thief) {
            return Err(not_that_node(&r.get_ref().thief));
        }
        let r = r.into_inner();
        let n = &self.node;
        if n.stopping.load(Ordering::Relaxed) || r.thief.is_empty() || r.thief == n.id {
            return Ok(Response::new(pb::StealReply::default()));
        }
        let lease = n.cluster.as_ref().map(|c| c.lease).unwrap_or_default();
        let grant = n.policy.grant(n.queue.len(), r.max as usize);
        let (tasks, own): (Vec<_>, Vec<_>) = n
            .queue
            .take(grant)
            .into_iter()
            .partition(|t| t.job.function.image.is_none());
        // A container image's function runs where its image is (peers do not pull it).
        for t in own {
            n.queue.push(&t.tenant(), t);
        }
        let tasks: Vec<_> = tasks
            .into_iter()
            .filter(|t| {
                let gone = t.reply.is_closed();
                if gone {
                    n.counters.callers_gone.fetch_add(1, Ordering::Relaxed);
                }
                !gone
            })
            .collect();
        let now = tokio::time::Instant::now().into_std();
        let mut invocations = Vec::with_capacity(tasks.len());
        let mut ledger = n.ledger.lock().unwrap_or_else(|p| p.into_inner());
        for mut task in tasks {
            task.attempt += 1;
            invocations.push(convert::invocation(
                &task.id,
                task.attempt,
                &n.id,
                &task.job,
                task.mode,
                lease,
            ));
            ledger.lend(task.id.clone(), task.attempt, &r.thief, task, now);
        }
        drop(ledger);
        n.counters
            .lent
            .fetch_add(invocations.len() as u64, Ordering::Relaxed);
        if !invocations.is_empty() {
            tracing::debug!(thief = %r.thief, n = invocations.len(), "lent invocations");
        }
        Ok(Response::new(pb::StealReply { invocations }))
    }

    async fn offer(&self, r: Request<pb::Invocation>) -> Result<Response<pb::OfferReply>, Status> {
        if !self.speaks_for(&r, &r.get_ref().origin) {
            return Err(not_that_node(&r.get_ref().origin));
        }
        let accepted = self.node.accept_offer(r.into_inner()).await;
        Ok(Response::new(pb::OfferReply { accepted }))
    }

    async fn complete(
        &self,
        r: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteReply>, Status> {
        if !self.speaks_for(&r, &r.get_ref().executor) {
            return Err(not_that_node(&r.get_ref().executor));
        }
        let r = r.into_inner();
        let n = &self.node;
        let task = n.ledger.lock().unwrap_or_else(|p| p.into_inner()).complete(
            &r.id,
            r.attempt,
            &r.executor,
        );
        let Some(task) = task else {
            return Ok(Response::new(pb::CompleteReply { accepted: false }));
        };
        n.counters.returned.fetch_add(1, Ordering::Relaxed);
        let outcome = convert::outcome(r.result, &task.job.request_id, &r.executor);
        let _ = task.reply.send(crate::Ran {
            outcome,
            node: r.executor,
        });
        Ok(Response::new(pb::CompleteReply { accepted: true }))
    }

    async fn renew(
        &self,
        r: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewReply>, Status> {
        if !self.speaks_for(&r, &r.get_ref().thief) {
            return Err(not_that_node(&r.get_ref().thief));
        }
        let r = r.into_inner();
        let now = tokio::time::Instant::now().into_std();
        let mut ledger = self.node.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let leased = r
            .held
            .iter()
            .map(|h| ledger.renew(&h.id, h.attempt, &r.thief, now))
            .collect();
        Ok(Response::new(pb::RenewReply { leased }))
    }

    async fn fetch_bundle(
        &self,
        r: Request<pb::BundleRequest>,
    ) -> Result<Response<pb::BundleReply>, Status> {
        let sha = r.into_inner().sha256;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument("sha256 must be 64 hex digits"));
        }
        if let Some(tar) = self.node.bundles.get(&sha) {
            return Ok(Response::new(pb::BundleReply {
                tar: tar.as_ref().clone(),
            }));
        }
        let store = Arc::clone(&self.node.store);
        let h = sha.clone();
        let found = tokio::task::spawn_blocking(move || store.get_bundle(&h))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        match found {
            Some(tar) => Ok(Response::new(pb::BundleReply { tar })),
            None => Err(Status::not_found(format!("no bundle {sha}"))),
        }
    }
}
