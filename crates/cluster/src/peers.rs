//! gRPC clients of the other nodes, one lazily connected channel per node and endpoint. On
//! mutual TLS a channel accepts only the certificate of the node it was made for
//! ([`crate::identity`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::membership::Peer;
use crate::pb::node_client::NodeClient;
use crate::{ClusterError, ClusterTls, MAX_MESSAGE};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Clients by node id and endpoint.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    by_peer: Mutex<HashMap<(String, String), NodeClient<Channel>>>,
    tls: Option<ClusterTls>,
}

impl Clients {
    /// Clients that speak mutual TLS with `tls`, or plaintext.
    pub(crate) fn new(tls: Option<ClusterTls>) -> Self {
        Self {
            by_peer: Mutex::new(HashMap::new()),
            tls,
        }
    }

    /// The client of `peer` at its endpoint (`http://HOST:PORT`, `https://` on TLS).
    pub(crate) fn get(&self, peer: &Peer) -> Result<NodeClient<Channel>, ClusterError> {
        let endpoint = peer.endpoint.as_str();
        let key = (peer.id.clone(), peer.endpoint.clone());
        let mut map = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let mut ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| ClusterError::Peer(format!("{endpoint}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        match (&self.tls, endpoint.starts_with("https://")) {
            (Some(tls), true) => {
                let config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca))
                    .identity(Identity::from_pem(&tls.cert, &tls.key))
                    .domain_name(crate::node_tls_name(&peer.id));
                ep = ep
                    .tls_config(config)
                    .map_err(|e| ClusterError::Tls(e.to_string()))?;
            }
            (None, false) => {}
            // Never send what a TLS cluster carries in the clear, nor trust a peer that
            // speaks it without a certificate.
            _ => {
                return Err(ClusterError::Peer(format!(
                    "{endpoint}: this node and the peer disagree on cluster TLS"
                )))
            }
        }
        let channel = ep.connect_lazy();
        let client = NodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        map.insert(key, client.clone());
        Ok(client)
    }
}

/// Runs one call to a peer under `limit`; a timeout or a transport failure is a
/// [`ClusterError::Peer`] naming the peer and the call.
pub(crate) async fn call<T>(
    endpoint: &str,
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(ClusterError::Peer(format!(
            "{what} at {endpoint}: {}: {}",
            status.code(),
            status.message()
        ))),
        Err(_) => Err(ClusterError::Peer(format!(
            "{what} at {endpoint}: no answer within {limit:?}"
        ))),
    }
}
