//! The API's HTTP server: accepting connections, over TLS where the operator configured it,
//! and bounding what a client can hold before anything it sends is trusted.
//!
//! - At most `max_connections` connections at once: the next waits in the kernel's backlog
//!   until one closes, so a flood of idle connections cannot take the node's descriptors.
//! - A client has `header_timeout` to send a request's headers (hyper's header-read timer, per
//!   request on a kept-alive connection too) and, with TLS, as long to finish its handshake; a
//!   slow-loris client is disconnected then. Bodies are bounded per route and in time by the
//!   API itself (`ignition_api`), after authentication.
//! - A shutdown stops accepting, then waits for the requests in flight to be answered.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::NodeError;

/// How the API's server treats connections.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (and a TLS handshake).
    pub header_timeout: Duration,
    /// How long it may take to send a request's body once the headers are in.
    pub body_timeout: Duration,
    /// Serve HTTPS only, with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// The API's certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, the server's first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// A TLS acceptor from `files` (rustls, with the ring provider the cluster's TLS uses too).
pub(crate) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, NodeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
        NodeError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("reading the certificate", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("reading the certificate", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(NodeError::Tls(format!(
            "{} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("reading the private key", &files.key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| NodeError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| NodeError::Tls(format!("the certificate and key do not make a pair: {e}")))?;
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `stop` fires, then waits for the requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    settings: HttpSettings,
    tls: Option<TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: the
                    // listener itself is fine; pause so that a persistent error does not spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (router, builder, graceful, tls) = (
            router.clone(),
            Arc::clone(&builder),
            Arc::clone(&graceful),
            tls.clone(),
        );
        let handshake = settings.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, peer, router, &builder, graceful).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            connection(tls_stream, peer, router, &builder, graceful).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    // A connection task holds the shutdown handle only until its connection is registered
    // with it (after at most a TLS handshake's timeout); then every registered connection is
    // told to finish: requests in flight are answered, idle kept-alive connections close.
    let mut graceful = graceful;
    let graceful = loop {
        match Arc::try_unwrap(graceful) {
            Ok(g) => break g,
            Err(shared) => {
                graceful = shared;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    graceful.shutdown().await;
    Ok(())
}

/// Serves one connection; its requests carry the client's address (`ConnectInfo`), which
/// function URLs hand to the function as `sourceIp`.
async fn connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    router: axum::Router,
    builder: &auto::Builder<TokioExecutor>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        TowerToHyperService::new(router.layer(axum::Extension(axum::extract::ConnectInfo(peer))));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let watched = graceful.watch(conn.into_owned());
    drop(graceful);
    if let Err(e) = watched.await {
        tracing::debug!(error = %e, "connection ended");
    }
}
