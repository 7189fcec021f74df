//! gRPC clients of the other nodes, one lazily connected channel per endpoint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pb::node_client::NodeClient;
use crate::{ClusterError, ClusterTls, MAX_MESSAGE, TLS_SERVER_NAME};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Clients by endpoint.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    by_endpoint: Mutex<HashMap<String, NodeClient<Channel>>>,
    tls: Option<ClusterTls>,
}

impl Clients {
    /// Clients that speak mutual TLS with `tls`, or plaintext.
    pub(crate) fn new(tls: Option<ClusterTls>) -> Self {
        Self {
            by_endpoint: Mutex::new(HashMap::new()),
            tls,
        }
    }

    /// The client of the node at `endpoint` (`http://HOST:PORT`).
    pub(crate) fn get(&self, endpoint: &str) -> Result<NodeClient<Channel>, ClusterError> {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(endpoint) {
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
                    .domain_name(TLS_SERVER_NAME);
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
        map.insert(endpoint.to_owned(), client.clone());
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
