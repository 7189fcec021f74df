//! Assembles an Ignition node from a typed [`NodeConfig`]: the store, the guest image, the VMM
//! driver, VM networking, the worker, the cluster node and the HTTP API, in that order, and
//! takes them down in the reverse order ([`RunningNode::shutdown`]).
//!
//! The CLI's `ignition server` turns flags, environment and a configuration file into a
//! [`NodeConfig`] and calls [`start`]; tests call it directly, with an in-process guest as the
//! driver where a test is about something other than the VM.

mod config;
mod error;
mod http;
mod vmm;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ignition_api::AppState;
use ignition_store::Store;
use ignition_worker::{PoolConfig, Worker, WorkerConfig};
use tokio::sync::oneshot;

pub use config::{
    ApiSettings, ClusterSettings, ClusterTlsFiles, ImageSettings, ImageSource, JailSettings,
    JailerChoice, NetworkConfig, NetworkMode, NodeConfig, VmmChoice, VmmConfig, WorkerLimits,
};
pub use error::NodeError;
pub use http::{HttpSettings, TlsFiles};
pub use ignition_types::TenantQuotas;
pub use vmm::resolve_vmm;

/// A node that serves its API.
#[derive(Debug)]
pub struct RunningNode {
    addr: SocketAddr,
    state: AppState,
    driver: Arc<dyn ignition_vmm::VmmDriver>,
    network: Option<Arc<ignition_net::Network>>,
    run_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The store as the worker's source of code bundles, for the images it builds, and the node's
/// container images for image functions' drives.
#[derive(Debug)]
struct StoreCode(Arc<Store>, Arc<ignition_oci::Images>);

impl ignition_worker::CodeSource for StoreCode {
    fn bundle(&self, sha256: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.get_bundle(sha256).map_err(|e| e.to_string())
    }

    fn image_drive(&self, digest_hex: &str) -> Result<Option<PathBuf>, String> {
        let digest = format!("sha256:{digest_hex}");
        if let Some(cached) = self.1.cache().get(&digest) {
            return Ok(Some(cached.path));
        }
        // Evicted (or never here, for a function deployed at another node): fetched again by
        // the digest a function pinned.
        let Some(pinned) = self.0.image_source(&digest).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if pinned.is_empty() {
            return Err(format!(
                "image {digest} came from an archive and is no longer in this node's cache: \
                 deploy the archive again"
            ));
        }
        let got = tokio::runtime::Handle::current()
            .block_on(self.1.pull(&pinned))
            .map_err(|e| e.to_string())?;
        if got.image.digest != digest {
            return Err(format!("{pinned} resolved to {}", got.image.digest));
        }
        Ok(Some(got.image.path))
    }
}

/// The node's container images, in the data directory.
fn images(config: &NodeConfig, data_dir: &Path) -> Result<Arc<ignition_oci::Images>, NodeError> {
    let s = &config.images;
    let drive_mib = ignition_worker::DRIVE_BYTES >> 20;
    if s.max_image_mib == 0 || s.max_image_mib >= drive_mib {
        return Err(NodeError::Config(format!(
            "--max-image-mib must be 1 to {} (a VM's image drive is {drive_mib} MiB)",
            drive_mib - 1
        )));
    }
    let options = ignition_oci::ImagesOptions {
        registry: ignition_oci::RegistryOptions {
            insecure: s.insecure_registries.clone(),
            credentials: s.credentials.clone(),
            timeout: s.pull_timeout,
        },
        max_image_bytes: s.max_image_mib << 20,
        cache_bytes: s.cache_mib << 20,
        drive_bytes: ignition_worker::DRIVE_BYTES,
    };
    ignition_oci::Images::new(&data_dir.join("images"), options)
        .map(Arc::new)
        .map_err(|e| NodeError::Config(format!("the image cache: {e}")))
}

/// How often a node on a shared store reads the reservations and tenants' quotas again (from
/// its cache, which a change at any node drops: a read costs a query only after a change).
const LIMITS_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// On a shared store, functions' reservations and tenants' quotas set at any node apply at
/// this one within [`LIMITS_REFRESH`] (each node enforces them on its own invocations and
/// writes, the concurrency ones within the permits it leases).
fn follow_limits(state: ignition_api::AppState) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LIMITS_REFRESH).await;
            let store = Arc::clone(&state.store);
            let read = tokio::task::spawn_blocking(move || {
                Ok::<_, ignition_store::StoreError>((
                    store.reserved_concurrency()?,
                    store.all_quota_overrides()?,
                ))
            })
            .await;
            match read {
                Ok(Ok((reserved, overrides))) => {
                    state.concurrency.refresh(reserved);
                    state.quotas.replace(overrides);
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the limits"),
                Err(_) => {}
            }
        }
    });
}

/// The shared store at `url`, or the embedded one in `data_dir`. Opened off the async threads:
/// the PostgreSQL client blocks.
async fn open_store(url: Option<String>, data_dir: PathBuf) -> Result<Store, NodeError> {
    tokio::task::spawn_blocking(move || match url {
        Some(url) => Store::connect(&url),
        None => Store::open(&data_dir),
    })
    .await
    .map_err(|e| NodeError::Config(format!("opening the store: {e}")))?
    .map_err(NodeError::Store)
}

/// Starts a node: when this returns, the API answers at [`RunningNode::addr`].
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
    config.check_safety()?;
    let tls = config.http.tls.as_ref().map(http::acceptor).transpose()?;
    std::fs::create_dir_all(&config.data_dir).map_err(NodeError::io(format!(
        "creating {}",
        config.data_dir.display()
    )))?;
    let data_dir = config
        .data_dir
        .canonicalize()
        .map_err(NodeError::io(format!(
            "resolving {}",
            config.data_dir.display()
        )))?;
    let store = Arc::new(open_store(config.store.clone(), data_dir.clone()).await?);
    let image = guest_image(config.image.clone()).await?;

    let run_dir = config
        .run_dir
        .clone()
        .unwrap_or_else(|| default_run_dir(&data_dir));
    // VMs of an earlier node on this data dir died with it (PDEATHSIG); their sockets did not.
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)
        .map_err(NodeError::io(format!("creating {}", run_dir.display())))?;
    let driver = vmm::driver(&config.vmm, &run_dir)?;
    // The drivers sweep what killed VMs left when they are made.
    tracing::info!(vmm = driver.name(), image = %image.id, "microVM driver ready");

    let deny = egress_deny(&config);
    let network = start_network(&config, &run_dir, deny.clone()).await?;
    let egress_deny = Arc::new(network.as_ref().map_or(deny, |n| n.egress_deny().clone()));
    let images = images(&config, &data_dir)?;
    let limits = &config.worker;
    let worker = Worker::new(
        Arc::clone(&driver),
        image,
        WorkerConfig {
            max_vms: limits.max_vms,
            boot_timeout: limits.boot_timeout,
            load_timeout: limits.init_timeout,
            snapshot_dir: data_dir.join("snapshots"),
            snapshot_disk_mib: limits.snapshot_disk_mib,
            pool: PoolConfig {
                memory_budget_mib: limits.pool_memory_mib,
                keep_alive: limits.keep_alive,
                refill_parallelism: limits
                    .refill_parallelism
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            },
            network: network.clone(),
            code_source: Some(Arc::new(StoreCode(Arc::clone(&store), Arc::clone(&images)))),
        },
    );
    let node_id = config
        .cluster
        .node_id
        .clone()
        .unwrap_or_else(|| hostname().unwrap_or_else(|| "node-1".to_owned()));
    let (reserved, quota_overrides) = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || {
            Ok::<_, ignition_store::StoreError>((
                store.reserved_concurrency()?,
                store.all_quota_overrides()?,
            ))
        })
        .await
        .map_err(|e| NodeError::Config(format!("reading the store: {e}")))?
        .map_err(NodeError::Store)?
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(NodeError::io(format!("listening on {}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(NodeError::io("reading the API's address"))?;
    let cluster = cluster_config(&config, addr)?;
    if let Some(c) = &cluster {
        ignition_cluster::validate_node_id(&node_id).map_err(NodeError::Config)?;
        if let Some(tls) = &c.tls {
            ignition_cluster::check_own_certificate(tls, &node_id).map_err(NodeError::Cluster)?;
        }
    }
    let node = ignition_cluster::Node::start(
        ignition_cluster::NodeConfig {
            node_id: node_id.clone(),
            slots: config.cluster.slots.unwrap_or(limits.max_vms),
            max_queued: limits.max_queued,
            cluster,
        },
        Arc::clone(&worker),
        Arc::clone(&store),
    )
    .await
    .map_err(NodeError::Cluster)?;
    let api = &config.api;
    let state = AppState {
        store,
        worker,
        node,
        node_id,
        images,
        metrics: Arc::new(ignition_api::Metrics::default()),
        logs: Arc::new(ignition_api::LogSink::default()),
        concurrency: ignition_api::Concurrency::new(
            api.max_concurrency,
            api.min_unreserved
                .unwrap_or((api.max_concurrency / 10).max(1)),
            reserved,
        ),
        dev_mode: api.dev,
        body_timeout: config.http.body_timeout,
        egress_deny,
        quotas: ignition_api::Quotas::new(config.api.quotas, quota_overrides),
        urls: ignition_api::UrlSettings {
            domain: api.url_domain.clone(),
            https: config.http.tls.is_some(),
        },
        events: ignition_api::EventConfig {
            retries: api.async_retries,
            retry_delay: api.async_retry_delay,
            max_pending: api.max_queued_events,
            max_age: api.max_event_age,
            ..ignition_api::EventConfig::default()
        },
    };
    ignition_api::spawn_dispatcher(state.clone());
    ignition_api::spawn_log_writer(state.clone());
    if state.store.is_shared() {
        follow_limits(state.clone());
        ignition_api::spawn_leasing(state.clone());
    }
    // The handle is not kept: like the dispatcher, the firer lives as long as the runtime, and
    // what it does is one store transaction at a time.
    drop(ignition_api::spawn_schedule_firer(state.clone()));
    {
        // What was provisioned before a restart is provisioned again, in the background.
        let state = state.clone();
        tokio::spawn(async move { ignition_api::restore_provisioned(&state).await });
    }
    if let Some(network) = &network {
        follow_peers(Arc::clone(&state.node), Arc::downgrade(network));
    }
    if api.dev {
        tracing::warn!("development mode: requests are not authenticated");
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let router = ignition_api::router_with(state.clone(), ignition_console::routes());
    let https = tls.is_some();
    let server = tokio::spawn(http::serve(
        listener,
        router,
        config.http.clone(),
        tls,
        stopped,
    ));
    tracing::info!(listen = %addr, https, data_dir = %data_dir.display(), "ignition server ready");
    Ok(RunningNode {
        addr,
        state,
        driver,
        network,
        run_dir,
        stop: Some(stop),
        server,
    })
}

impl RunningNode {
    /// The address the API answers at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's shared state (store, worker, cluster node), for tests and embedders.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Waits until the HTTP server stops by itself (it does not, unless it fails): for a caller
    /// that only wants to run the node until a signal, in a `select!` with the signal.
    pub async fn serving(&mut self) -> Result<(), NodeError> {
        match (&mut self.server).await {
            Ok(r) => r.map_err(NodeError::io("serving HTTP")),
            Err(e) => Err(NodeError::Task(e.to_string())),
        }
    }

    /// Stops the node. In order, and each step waited for, not slept on:
    ///
    /// 1. The API stops accepting connections and waits for the requests in flight to be
    ///    answered (an invocation in flight runs to its end or its timeout).
    /// 2. The cluster node fails what is still queued here with "shutting down", stops waiting
    ///    for what it lent, aborts what it held for others (their origins queue it again when
    ///    the lease lapses) and leaves the gossip membership.
    /// 3. The worker destroys its warm slots and reused VMs, then waits until every guest it
    ///    started is destroyed: slots still being filled see the pool stopped and destroy
    ///    themselves, and the teardowns of answered invocations finish. A guest counts until
    ///    its `destroy` returns, which waits for its VMM process to be gone.
    /// 4. The driver sweeps what killed VMs left (cgroups), the VM networks are removed
    ///    (namespaces, links, nftables table), and the run directory goes.
    ///
    /// So when this returns no VM, network or socket of this node is left on the host, except
    /// for a guest that did not finish its destroy within the worker's bound, which is logged.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match (&mut self.server).await {
            Ok(r) => r.map_err(NodeError::io("serving HTTP")),
            Err(e) => Err(NodeError::Task(e.to_string())),
        };
        self.state.node.shutdown().await;
        self.state.worker.shutdown().await;
        self.driver.sweep();
        if let Some(n) = &self.network {
            n.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        tracing::info!("node stopped");
        served
    }
}

/// Keeps the cluster's live peers among what VMs never reach, as gossip finds them.
fn follow_peers(
    node: Arc<ignition_cluster::Node>,
    network: std::sync::Weak<ignition_net::Network>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let Some(network) = network.upgrade() else {
                return;
            };
            let peers = node
                .peer_addresses()
                .await
                .into_iter()
                .filter_map(|ip| match ip {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect();
            network.deny_peers(peers);
        }
    });
}

async fn guest_image(source: ImageSource) -> Result<ignition_image::GuestImage, NodeError> {
    match source {
        ImageSource::Ready(image) => Ok(image),
        ImageSource::Build { cache_dir, agent } => {
            let opts = ignition_image::BuildOptions { cache_dir, agent };
            tokio::task::spawn_blocking(move || ignition_image::build(&opts))
                .await
                .map_err(|e| NodeError::Task(e.to_string()))?
                .map_err(NodeError::Image)
        }
        ImageSource::Cached { cache_dir } => {
            ignition_image::load_current(&cache_dir).map_err(NodeError::Image)
        }
    }
}

/// What no function of this node reaches: the operator's ranges (or the default list) and,
/// whatever they say, the node's listen addresses and its cluster peers (by `--peers`).
fn egress_deny(config: &NodeConfig) -> ignition_net::EgressDeny {
    use std::net::{IpAddr, ToSocketAddrs};
    let base = match &config.network.egress_deny {
        Some(list) => ignition_net::EgressDeny::new(list.clone()),
        None => ignition_net::EgressDeny::default(),
    };
    let peers = config
        .cluster
        .peers
        .iter()
        .filter_map(|p| p.to_socket_addrs().ok())
        .flatten();
    let addrs = [Some(config.listen), config.cluster_addr()]
        .into_iter()
        .flatten()
        .chain(peers)
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
    base.with_always(addrs)
}

async fn start_network(
    config: &NodeConfig,
    run_dir: &Path,
    deny: ignition_net::EgressDeny,
) -> Result<Option<Arc<ignition_net::Network>>, NodeError> {
    let net = &config.network;
    let cni = match &net.mode {
        NetworkMode::None => return Ok(None),
        NetworkMode::Builtin => None,
        NetworkMode::Cni { conf, bin_dirs } => Some(
            ignition_net::CniConfig::load(conf, bin_dirs.clone()).map_err(NodeError::Network)?,
        ),
    };
    let cni_mode = cni.is_some();
    let network = ignition_net::Network::start(ignition_net::NetConfig {
        subnet: net.vm_subnet,
        cni,
        tag: network_tag(run_dir),
        dns: net.dns.clone(),
        tap_group: config.vmm.jail.gid,
        spares: net.spare_networks,
        deny,
    })
    .await
    .map_err(NodeError::Network)?;
    if cni_mode {
        tracing::info!(table = network.table(), "VM networking ready (CNI)");
    } else {
        tracing::info!(subnet = %net.vm_subnet, table = network.table(), links = network.interface_prefix(), "VM networking ready");
    }
    Ok(Some(network))
}

fn cluster_config(
    config: &NodeConfig,
    api: SocketAddr,
) -> Result<Option<ignition_cluster::ClusterConfig>, NodeError> {
    let settings = &config.cluster;
    // With port 0 asked for the API, the port + 1 rule follows the port it got.
    let addr = settings.addr.or_else(|| {
        (!settings.peers.is_empty()).then(|| SocketAddr::new(api.ip(), api.port().wrapping_add(1)))
    });
    let Some(addr) = addr else {
        return Ok(None);
    };
    let tls = match &settings.tls {
        Some(files) => {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(NodeError::io(format!("reading {}", p.display())))
            };
            Some(ignition_cluster::ClusterTls {
                ca: read(&files.ca)?,
                cert: read(&files.cert)?,
                key: read(&files.key)?,
            })
        }
        None => {
            tracing::warn!("cluster traffic is neither authenticated nor encrypted (no --cluster-ca): keep --cluster-addr on a network only the nodes reach");
            None
        }
    };
    let mut c = ignition_cluster::ClusterConfig::new(addr, settings.peers.clone());
    c.steal = !settings.no_steal;
    if let Some(p) = settings.steal_probes {
        c.probes = p;
    }
    if let Some(lease) = settings.lease {
        c.lease = lease.max(Duration::from_millis(400));
    }
    c.tls = tls;
    Ok(Some(c))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn short_hash(data: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// A short, per-data-dir run directory: socket paths must stay under 108 bytes.
fn default_run_dir(data_dir: &Path) -> PathBuf {
    std::env::temp_dir().join(format!("ignition-{:08x}", short_hash(data_dir) as u32))
}

/// Four characters of `[a-z0-9]` naming this node's links and rules, stable for a run
/// directory so that a restarted node sweeps what its predecessor left.
fn network_tag(run_dir: &Path) -> String {
    let mut n = short_hash(run_dir);
    (0..4)
        .map(|_| {
            let c = b"abcdefghijklmnopqrstuvwxyz0123456789"[(n % 36) as usize];
            n /= 36;
            char::from(c)
        })
        .collect()
}
