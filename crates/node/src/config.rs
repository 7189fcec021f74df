//! [`NodeConfig`]: everything a node is made from, typed. The CLI fills it from flags, the
//! environment and a configuration file; tests fill it directly.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ignition_image::GuestImage;
use ignition_vmm::{Accel, VmmDriver};

/// How a node is made.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the snapshots, caches and (without [`NodeConfig::store`]) the store live (created
    /// if missing).
    pub data_dir: PathBuf,
    /// `--store postgres://...`: the store a cluster's nodes share (PostgreSQL). `None`: the
    /// embedded SQLite store in the data directory.
    pub store: Option<String>,
    /// The API's address; port 0 picks a free one ([`crate::RunningNode::addr`] tells).
    pub listen: SocketAddr,
    /// Where the guest image comes from.
    pub image: ImageSource,
    /// Which hypervisor runs VMs, and how.
    pub vmm: VmmConfig,
    /// Directory for the VMs' sockets (default: a short per-data-dir path under the temp dir).
    pub run_dir: Option<PathBuf>,
    /// The worker's bounds.
    pub worker: WorkerLimits,
    /// VM networking.
    pub network: NetworkConfig,
    /// This node's id and its cluster.
    pub cluster: ClusterSettings,
    /// The API's policies.
    pub api: ApiSettings,
    /// The API's server: connections, timeouts, TLS.
    pub http: crate::HttpSettings,
    /// Container images: registries, limits, the cache.
    pub images: ImageSettings,
}

/// How a node fetches and keeps container images.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// `--insecure-registry HOST:PORT`: registries reached over plain HTTP (every other one
    /// over HTTPS).
    pub insecure_registries: Vec<String>,
    /// Credentials by registry (`HOST[:PORT]`); anonymous elsewhere.
    pub credentials: std::collections::HashMap<String, ignition_oci::Credentials>,
    /// `--max-image-mib`: the largest image accepted, compressed or unpacked.
    pub max_image_mib: u64,
    /// `--image-cache-mib`: disk the node's flattened images may take (least recently used
    /// out).
    pub cache_mib: u64,
    /// How long a pull may take.
    pub pull_timeout: Duration,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            credentials: Default::default(),
            max_image_mib: 3072,
            cache_mib: 20 * 1024,
            pull_timeout: Duration::from_secs(300),
        }
    }
}

impl NodeConfig {
    /// A node with the defaults `ignition server` has, storing in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            store: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            image: ImageSource::Cached {
                cache_dir: ignition_image::default_cache_dir(),
            },
            vmm: VmmConfig::default(),
            run_dir: None,
            worker: WorkerLimits::default(),
            network: NetworkConfig::default(),
            cluster: ClusterSettings::default(),
            api: ApiSettings::default(),
            http: crate::HttpSettings::default(),
            images: ImageSettings::default(),
        }
    }

    /// This node's cluster address: the one given, or with peers and none given, the API's
    /// address with port + 1.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster.addr.or_else(|| {
            (!self.cluster.peers.is_empty())
                .then(|| SocketAddr::new(self.listen.ip(), self.listen.port().wrapping_add(1)))
        })
    }

    /// Refuses a configuration that would open the node to anyone who reaches it: development
    /// mode (no authentication) anywhere but on loopback, and cluster traffic in clear beyond
    /// loopback unless the operator says the network is the nodes' own; and a cluster without
    /// the store its nodes share.
    pub fn check_safety(&self) -> Result<(), crate::NodeError> {
        if self.api.dev && !self.listen.ip().is_loopback() {
            return Err(crate::NodeError::Config(format!(
                "--dev turns authentication off, so it serves on loopback only, and {} is not: \
                 listen on 127.0.0.1, or drop --dev and make access keys (ignition key create)",
                self.listen
            )));
        }
        if self.cluster_addr().is_some() && self.store.is_none() {
            return Err(crate::NodeError::Config(
                "the nodes of a cluster share their functions, keys and events in PostgreSQL: \
                 pass --store postgres://USER@HOST[:PORT]/DB, the same on every node (a single \
                 node without --peers and --cluster-addr keeps its embedded store)"
                    .to_owned(),
            ));
        }
        if let Some(addr) = self.cluster_addr() {
            if !addr.ip().is_loopback() && self.cluster.tls.is_none() && !self.cluster.insecure {
                return Err(crate::NodeError::Config(format!(
                    "cluster traffic on {addr} would be neither encrypted nor authenticated: pass \
                     --cluster-ca, --cluster-cert and --cluster-key (ignition cluster certs makes \
                     them), or --cluster-insecure on a network only the nodes reach"
                )));
            }
        }
        Ok(())
    }
}

/// Where the guest image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Build it (idempotent and cheap when nothing changed) around this agent, in this cache.
    Build {
        /// The image cache.
        cache_dir: PathBuf,
        /// The statically linked guest agent.
        agent: PathBuf,
    },
    /// Use the image the cache holds.
    Cached {
        /// The image cache.
        cache_dir: PathBuf,
    },
    /// This image, as it is.
    Ready(GuestImage),
}

/// Which hypervisor: what `--vmm` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmmChoice {
    /// Firecracker where it is installed and KVM runs at hardware speed; QEMU elsewhere.
    #[default]
    Auto,
    /// QEMU `microvm` (KVM or TCG).
    Qemu,
    /// Firecracker (needs hardware KVM).
    Firecracker,
}

/// Firecracker's jailer: what `--jailer` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JailerChoice {
    /// The `jailer` beside Firecracker or on `PATH`, if any.
    #[default]
    Auto,
    /// None: the node's own jail, as for QEMU.
    None,
    /// This binary.
    Path(PathBuf),
}

/// How VMM processes are confined.
#[derive(Debug, Clone, Copy)]
pub struct JailSettings {
    /// Namespaces, seccomp, cgroups and an unprivileged user per VMM; off for hosts where the
    /// node cannot make them.
    pub enabled: bool,
    /// Jailed VMMs run as users `uid_base..uid_base + uids`, one per VM in turn.
    pub uid_base: u32,
    /// How many users jailed VMMs take in turn.
    pub uids: u32,
    /// The group of jailed VMMs.
    pub gid: u32,
}

impl Default for JailSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            uid_base: ignition_vmm::jail::DEFAULT_FIRST_UID,
            uids: ignition_vmm::jail::DEFAULT_UID_COUNT,
            gid: ignition_vmm::jail::DEFAULT_GID,
        }
    }
}

/// The hypervisor and its binaries.
#[derive(Debug, Clone)]
pub struct VmmConfig {
    /// Which hypervisor.
    pub choice: VmmChoice,
    /// A driver made by the caller, used instead of `choice` (an in-process guest in tests).
    pub driver: Option<Arc<dyn VmmDriver>>,
    /// QEMU's accelerator.
    pub accel: Accel,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The Firecracker binary.
    pub firecracker: PathBuf,
    /// Firecracker's jailer.
    pub jailer: JailerChoice,
    /// How VMM processes are confined.
    pub jail: JailSettings,
}

impl Default for VmmConfig {
    fn default() -> Self {
        Self {
            choice: VmmChoice::Auto,
            driver: None,
            accel: Accel::Auto,
            qemu: "qemu-system-x86_64".into(),
            firecracker: "firecracker".into(),
            jailer: JailerChoice::Auto,
            jail: JailSettings::default(),
        }
    }
}

/// How many VMs, and how long their steps may take.
#[derive(Debug, Clone)]
pub struct WorkerLimits {
    /// MicroVMs that run at once.
    pub max_vms: usize,
    /// How long a guest may take to boot.
    pub boot_timeout: Duration,
    /// How long a function's initialization may take.
    pub init_timeout: Duration,
    /// The warm pool's PSS budget, MiB (0 disables it).
    pub pool_memory_mib: u64,
    /// How long warm slots and reused VMs are kept after a function's last invocation.
    pub keep_alive: Duration,
    /// Restores that may run at once to refill the pool (default: the number of CPUs).
    pub refill_parallelism: Option<usize>,
    /// MiB of disk function snapshots may take; the least recently used go past it.
    pub snapshot_disk_mib: Option<u64>,
    /// Invocations waiting for a microVM the node holds at most (429 past it).
    pub max_queued: usize,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            max_vms: 4,
            boot_timeout: Duration::from_secs(60),
            init_timeout: Duration::from_secs(30),
            pool_memory_mib: 1024,
            keep_alive: Duration::from_secs(60),
            refill_parallelism: None,
            snapshot_disk_mib: Some(10 * 1024),
            max_queued: 1000,
        }
    }
}

/// How VMs are networked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A namespace, tap and veth per VM, egress enforced with nftables (needs root).
    #[default]
    Builtin,
    /// CNI plugins make each VM's interface; Ignition's nftables rules enforce egress.
    Cni {
        /// The network configuration list (`.conflist`) or single `.conf`.
        conf: PathBuf,
        /// Where the plugin binaries are.
        bin_dirs: Vec<PathBuf>,
    },
    /// No network interface at all.
    None,
}

/// VM networking.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The mode.
    pub mode: NetworkMode,
    /// Where VM addresses come from, a /30 per VM.
    pub vm_subnet: ignition_net::Ipv4Net,
    /// VM networks kept made ahead.
    pub spare_networks: usize,
    /// Resolvers offered to guests (empty: the host's non-loopback ones).
    pub dns: Vec<Ipv4Addr>,
    /// Destinations no function reaches (`--egress-deny`); `None`: the default list
    /// ([`ignition_net::DEFAULT_EGRESS_DENY`]). The node itself, its peers and its listen
    /// addresses are denied in any case.
    pub egress_deny: Option<Vec<ignition_net::DeniedNet>>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            mode: NetworkMode::Builtin,
            vm_subnet: ignition_net::Ipv4Net::new(Ipv4Addr::new(10, 200, 0, 0), 16)
                .unwrap_or(ignition_net::Ipv4Net::ZERO),
            spare_networks: 2,
            dns: Vec::new(),
            egress_deny: None,
        }
    }
}

/// The node's identity and its cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterSettings {
    /// This node's id (default: the host name).
    pub node_id: Option<String>,
    /// Executions this node runs at once (default: `max_vms`).
    pub slots: Option<usize>,
    /// Members to join through.
    pub peers: Vec<String>,
    /// This node's cluster address (default with peers: the API's, port + 1).
    pub addr: Option<SocketAddr>,
    /// Steal from other nodes when idle.
    pub no_steal: bool,
    /// Peers probed per steal attempt (default: the policy's).
    pub steal_probes: Option<usize>,
    /// How long a stolen invocation's lease lasts without renewal (default: 10 s).
    pub lease: Option<Duration>,
    /// Mutual TLS between nodes: the CA, this node's certificate and key (PEM files).
    pub tls: Option<ClusterTlsFiles>,
    /// Allow cluster traffic in clear beyond loopback (a network only the nodes reach).
    pub insecure: bool,
}

/// The files of mutual TLS between nodes.
#[derive(Debug, Clone)]
pub struct ClusterTlsFiles {
    /// The cluster's CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// The API's policies.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// No authentication: every request is the default tenant's.
    pub dev: bool,
    /// Invocations accepted at once.
    pub max_concurrency: u32,
    /// What reserved concurrency must leave to functions without a reservation (default: 10%
    /// of `max_concurrency`, at least 1).
    pub min_unreserved: Option<u32>,
    /// Retries of a failed asynchronous invocation.
    pub async_retries: u32,
    /// Delay before the first retry of an asynchronous invocation.
    pub async_retry_delay: Duration,
    /// Asynchronous invocations held at most, queued or running.
    pub max_queued_events: u64,
    /// How old an asynchronous invocation may grow before it goes to the failed events.
    pub max_event_age: Duration,
    /// `--url-domain`: function URLs are `<url-id>.DOMAIN`, routed by the Host header
    /// (wildcard DNS); without it they are `/lambda-url/<url-id>/` on any node.
    pub url_domain: Option<String>,
    /// Every tenant's quotas, unless an operator set its own.
    pub quotas: ignition_types::TenantQuotas,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            dev: false,
            max_concurrency: 1000,
            min_unreserved: None,
            async_retries: 2,
            async_retry_delay: Duration::from_secs(1),
            max_queued_events: 10_000,
            max_event_age: Duration::from_secs(6 * 3600),
            url_domain: None,
            quotas: ignition_types::TenantQuotas::default(),
        }
    }
}
