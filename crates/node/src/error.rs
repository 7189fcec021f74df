//! Why a node could not start or stop cleanly.

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened or read.
    #[error("the store: {0}")]
    Store(#[source] ignition_store::StoreError),
    /// The guest image could not be built or loaded.
    #[error("the guest image: {0}")]
    Image(#[source] ignition_image::ImageError),
    /// VM networking could not be set up.
    #[error("setting up VM networking (needs root and nftables; --network none runs VMs without a network): {0}")]
    Network(#[source] ignition_net::NetError),
    /// The cluster node could not start.
    #[error("starting the node: {0}")]
    Cluster(#[source] ignition_cluster::ClusterError),
    /// The chosen hypervisor cannot run here.
    #[error("{0}")]
    Vmm(String),
    /// The API's TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The configuration is unsafe or inconsistent; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// A background task failed.
    #[error("a node task failed: {0}")]
    Task(String),
}

impl NodeError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
