//! `ignition server`: the translation of flags (and of the environment and a configuration
//! file, see [`crate::layered`]) into an [`ignition_node::NodeConfig`]; the node crate does the
//! rest.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use ignition_node::{
    ApiSettings, ClusterSettings, ClusterTlsFiles, HttpSettings, ImageSettings, ImageSource,
    JailSettings, JailerChoice, NetworkConfig, NetworkMode as NodeNetworkMode, NodeConfig,
    TlsFiles, VmmChoice as NodeVmmChoice, VmmConfig, WorkerLimits,
};
use ignition_vmm::Accel;

use crate::{locate, CacheArgs};

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// A TOML file of settings: keys are the long flag names with `_` for `-`
    /// (`max_vms = 8`, lists as arrays). A flag, then `IGNITION_<FLAG>` in the environment,
    /// take precedence over it.
    #[arg(long, value_name = "FILE.toml")]
    pub(crate) config: Option<PathBuf>,
    /// How the server logs: `text` (coloured only on a terminal) or `json` (one object per
    /// line: timestamp, level, target, message and fields).
    #[arg(long, default_value = "text")]
    pub(crate) log_format: crate::logging::LogFormat,
    /// Where the node keeps snapshots, caches and (without --store) its store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The store the nodes of a cluster share: `postgres://USER@HOST[:PORT]/DB[?...]`
    /// (several `HOST:PORT` separated by commas, with `target_session_attrs=read-write`, to
    /// follow a primary's failover). Without it, the SQLite store in the data directory.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Address of the HTTP API.
    #[arg(long, default_value = crate::client::DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[command(flatten)]
    cache: CacheArgs,
    /// Accelerator: kvm, tcg, or auto (KVM only where the CPU virtualizes in hardware).
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// The hypervisor: `qemu`, `firecracker`, or `auto` (Firecracker where it is installed and
    /// KVM runs at hardware speed, as `ignition doctor` reports; QEMU elsewhere).
    #[arg(long, default_value = "auto")]
    vmm: VmmChoice,
    /// The Firecracker binary.
    #[arg(long, default_value = "firecracker")]
    firecracker: PathBuf,
    /// Firecracker's jailer: `auto` (the `jailer` beside Firecracker or on PATH, if any), `none`
    /// (the server's own jail, as for QEMU), or its path.
    #[arg(long, default_value = "auto", value_parser = parse_jailer)]
    jailer: JailerChoice,
    /// MicroVMs that may run at once; further invocations wait.
    #[arg(long, default_value_t = 4)]
    max_vms: usize,
    /// Seconds a guest may take to boot.
    #[arg(long, default_value_t = 60)]
    boot_timeout: u64,
    /// Seconds a function's initialization (code install, runtime start, imports) may take.
    #[arg(long, default_value_t = 30)]
    init_timeout: u64,
    /// Memory budget of the warm pool, MiB of PSS (0 disables it).
    #[arg(long, default_value_t = 1024)]
    pool_memory_mib: u64,
    /// Seconds a function's warm slots and reused VMs are kept after its last invocation.
    #[arg(long, default_value_t = 60)]
    keep_alive: u64,
    /// Restores that may run at once to refill the pool (default: the number of CPUs).
    #[arg(long)]
    refill_parallelism: Option<usize>,
    /// MiB of disk function snapshots may take (each about its function's memory); past it the
    /// least recently used are evicted (0: unbounded).
    #[arg(long, default_value_t = 10 * 1024)]
    snapshot_disk_mib: u64,
    /// Invocations waiting for a microVM the node holds at most; past it an invocation gets
    /// 429 TooManyRequestsException. A queued invocation whose caller has gone is dropped
    /// unrun.
    #[arg(long, default_value_t = 1000)]
    max_queued_invocations: usize,
    /// Run VMM processes without namespaces, seccomp and cgroups (for hosts where the server
    /// cannot create them).
    #[arg(long)]
    no_jail: bool,
    /// Jailed VMMs run as users FIRST.. of --vmm-uids, one per VM in turn.
    #[arg(long, default_value_t = ignition_vmm::jail::DEFAULT_FIRST_UID, value_parser = clap::value_parser!(u32).range(1..))]
    vmm_uid_base: u32,
    /// How many users jailed VMMs take in turn.
    #[arg(long, default_value_t = ignition_vmm::jail::DEFAULT_UID_COUNT, value_parser = clap::value_parser!(u32).range(1..))]
    vmm_uids: u32,
    /// The group of jailed VMMs (it may attach to VMs' tap devices and open snapshots' memory).
    #[arg(long, default_value_t = ignition_vmm::jail::DEFAULT_GID)]
    vmm_gid: u32,
    /// Directory for the VMs' sockets (default: a short per-data-dir path under the temp dir).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// This node's id (unique in its cluster; default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// Executions this node runs at once; further invocations queue here, where idle nodes
    /// of the cluster may take them (default: --max-vms).
    #[arg(long)]
    slots: Option<usize>,
    /// Join a cluster through these members' cluster addresses (`HOST:PORT`, comma-separated
    /// or repeated).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// This node's cluster address: gossip on UDP and gRPC on TCP, same port; peers must be
    /// able to reach it (default with --peers: the API's address, port + 1). Given alone, the
    /// node founds a cluster that others join with `--peers` this address.
    #[arg(long)]
    cluster_addr: Option<SocketAddr>,
    /// Do not steal from other nodes when idle (they may still take this node's queue).
    #[arg(long)]
    no_steal: bool,
    /// Peers probed per steal attempt.
    #[arg(long, default_value_t = 2)]
    steal_probes: usize,
    /// Milliseconds a stolen invocation's lease lasts without renewal; an origin that hears
    /// nothing for this long queues the invocation again.
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// The cluster's CA certificate (PEM): with --cluster-cert and --cluster-key, nodes speak
    /// mutual TLS and accept only peers with a certificate from this CA
    /// (`ignition cluster certs` makes them). Without, cluster traffic is plaintext and
    /// unauthenticated: keep --cluster-addr on a network only the nodes reach.
    #[arg(long, requires_all = ["cluster_cert", "cluster_key"])]
    cluster_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by --cluster-ca and naming this node's --node-id
    /// (`ignition cluster certs --node ID` makes it so).
    #[arg(long, requires = "cluster_ca")]
    cluster_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "cluster_ca")]
    cluster_key: Option<PathBuf>,
    /// Allow cluster traffic without mutual TLS on a non-loopback --cluster-addr (a network
    /// only the nodes reach); without it such a node refuses to start.
    #[arg(long)]
    cluster_insecure: bool,
    /// Serve the API over HTTPS only, with this certificate chain (PEM; with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections the API serves at once; more wait until one closes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a client may take to send a request's headers (or a TLS handshake).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a client may take to send a request's body once its headers are in.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// VM networking: `builtin` (a namespace, tap and veth per VM, egress enforced with
    /// nftables; needs root), `cni` (the namespace's interface made by CNI plugins, see
    /// --cni-conf; egress still enforced by Ignition) or `none` (no network interface).
    #[arg(long, default_value = "builtin")]
    network: NetworkMode,
    /// A registry reached over plain HTTP instead of HTTPS (`HOST:PORT`, repeatable or
    /// comma-separated): only for registries on a network the operator trusts.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Registry credentials: a Docker `config.json` (its `auths`, by registry host); the
    /// node pulls anonymously from registries it does not list.
    #[arg(long, value_name = "FILE")]
    registry_auth_file: Option<PathBuf>,
    /// The largest container image accepted, compressed or unpacked, in MiB (under the 4 GiB
    /// of a VM's image drive).
    #[arg(long, default_value_t = 3072, value_parser = clap::value_parser!(u64).range(1..4096))]
    max_image_mib: u64,
    /// Disk the node's flattened container images may take, in MiB; the least recently used
    /// go first (and are fetched again when needed).
    #[arg(long, default_value_t = 20 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    image_cache_mib: u64,
    /// Seconds a container image's pull may take.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    image_pull_timeout: u64,
    /// With `--network cni`: the network configuration list (`.conflist`) or single `.conf`.
    #[arg(long)]
    cni_conf: Option<PathBuf>,
    /// With `--network cni`: where the plugin binaries are (repeatable).
    #[arg(long = "cni-bin-dir", default_values = ["/usr/lib/cni", "/opt/cni/bin"])]
    cni_bin_dirs: Vec<PathBuf>,
    /// Where VM addresses come from, a /30 per VM. Must not overlap the host's networks.
    #[arg(long, default_value = "10.200.0.0/16")]
    vm_subnet: ignition_net::Ipv4Net,
    /// VM networks (namespace, tap, links) kept made ahead, so that a VM restored from a
    /// snapshot does not wait for its own; each holds one address. 0: made on each VM's path.
    #[arg(long, default_value_t = 2)]
    spare_networks: usize,
    /// Local development mode: no authentication, every request acts as the default tenant.
    /// Without it, every request but `GET /` needs an access key (`ignition key create`).
    #[arg(long)]
    dev: bool,
    /// Invocations the node accepts at once (running or waiting for a VM); beyond it, and
    /// beyond a function's reserved concurrency, invokes get 429 TooManyRequestsException.
    #[arg(long, default_value_t = 1000)]
    max_concurrency: u32,
    /// Invocations that functions' reserved concurrency must leave to functions without one; a
    /// reservation that would leave fewer is refused (default: 10% of --max-concurrency, at
    /// least 1).
    #[arg(long)]
    min_unreserved: Option<u32>,
    /// Retries of a failed asynchronous invocation (`X-Amz-Invocation-Type: Event`) before it
    /// goes to the function's failed events.
    #[arg(long, default_value_t = 2)]
    async_retries: u32,
    /// Milliseconds before the first retry of an asynchronous invocation; each further retry
    /// waits twice as long.
    #[arg(long, default_value_t = 1000)]
    async_retry_delay_ms: u64,
    /// Asynchronous invocations the node holds at most, queued or running (each up to 256 KiB
    /// in the store); beyond it an `Event` invoke gets 429 TooManyRequestsException.
    #[arg(long, default_value_t = 10_000)]
    max_queued_events: u64,
    /// Seconds an asynchronous invocation may wait, throttled or between retries, before it
    /// goes to the failed events (Lambda's MaximumEventAgeInSeconds: 60 to 21600).
    #[arg(long, default_value_t = 21_600, value_parser = clap::value_parser!(u64).range(60..=21_600))]
    max_event_age: u64,
    /// Serve function URLs as `<url-id>.DOMAIN` (routed by the Host header: point a wildcard
    /// DNS name or a proxy at the nodes), e.g. `fn.example.com` or `fn.example.com:9000`.
    /// Without it a URL is `/lambda-url/<url-id>/` on the node, which needs no DNS.
    #[arg(long, value_name = "DOMAIN", value_parser = parse_url_domain)]
    url_domain: Option<String>,
    /// Functions a tenant may have (an operator's key sets a tenant's own quotas at
    /// `PUT /v1/tenants/TENANT/quotas`).
    #[arg(long, default_value_t = 500)]
    quota_functions: u64,
    /// Published versions a tenant's function may have.
    #[arg(long, default_value_t = 100)]
    quota_versions: u64,
    /// MiB of code a tenant may store, over its functions and versions (each bundle once).
    #[arg(long, default_value_t = 2048)]
    quota_code_mib: u64,
    /// Asynchronous invocations a tenant may have queued or running.
    #[arg(long, default_value_t = 1000)]
    quota_queued_events: u64,
    /// Invocations a tenant may run at once.
    #[arg(long, default_value_t = 1000)]
    quota_concurrency: u64,
    /// Destinations no function reaches, whatever its policy (CIDRs, IPv4 or IPv6; repeatable
    /// or comma-separated). Given, it replaces the default list: loopback, 0.0.0.0/8, the
    /// private ranges, 100.64.0.0/10, link-local (cloud metadata), multicast, 240.0.0.0/4, and
    /// IPv6 loopback, ULA, link-local and multicast. The node's own addresses, its peers and
    /// its listen addresses are denied whatever this says.
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    egress_deny: Option<Vec<ignition_net::DeniedNet>>,
    /// DNS resolver offered to guests whose egress policy reaches it (repeatable; default:
    /// the host's non-loopback resolvers).
    #[arg(long = "dns")]
    dns: Vec<std::net::Ipv4Addr>,
}

/// Which hypervisor runs VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum VmmChoice {
    /// Firecracker on hardware KVM with Firecracker installed; QEMU elsewhere.
    Auto,
    /// QEMU `microvm` (KVM or TCG).
    Qemu,
    /// Firecracker (needs hardware KVM).
    Firecracker,
}

/// How VMs are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum NetworkMode {
    /// Ignition's own namespaces, links and nftables rules.
    Builtin,
    /// CNI plugins make each VM's interface; Ignition's nftables rules enforce egress.
    Cni,
    /// No network interface at all.
    None,
}

fn parse_jailer(s: &str) -> Result<JailerChoice, String> {
    Ok(match s {
        "auto" => JailerChoice::Auto,
        "none" => JailerChoice::None,
        "" => return Err("empty path".to_owned()),
        path => JailerChoice::Path(PathBuf::from(path)),
    })
}

pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Path::new(&d).join("ignition");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".local/share/ignition")
}

impl ServerArgs {
    /// The node these flags describe.
    pub(crate) fn node_config(&self) -> Result<NodeConfig> {
        let cache_dir = self.cache.cache_dir();
        // With an agent at hand, build (idempotent and cheap when nothing changed) so a rebuilt
        // agent or a new kernel is picked up; without one, use whatever image the cache holds.
        let image = match locate::agent(self.cache.agent.as_deref()) {
            Ok(agent) => ImageSource::Build { cache_dir, agent },
            Err(no_agent) => {
                tracing::debug!(error = %no_agent, "no agent: using the cached image");
                ImageSource::Cached { cache_dir }
            }
        };
        let network = match (self.network, &self.cni_conf) {
            (NetworkMode::Cni, Some(conf)) => NodeNetworkMode::Cni {
                conf: conf.clone(),
                bin_dirs: self.cni_bin_dirs.clone(),
            },
            (NetworkMode::Cni, None) => anyhow::bail!("--network cni needs --cni-conf FILE"),
            (_, Some(_)) => anyhow::bail!("--cni-conf is for --network cni"),
            (NetworkMode::Builtin, None) => NodeNetworkMode::Builtin,
            (NetworkMode::None, None) => NodeNetworkMode::None,
        };
        let tls = match (&self.cluster_ca, &self.cluster_cert, &self.cluster_key) {
            (Some(ca), Some(cert), Some(key)) => Some(ClusterTlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Ok(NodeConfig {
            data_dir: self.data_dir.clone().unwrap_or_else(default_data_dir),
            store: self.store.clone(),
            listen: self.listen,
            image,
            vmm: VmmConfig {
                choice: match self.vmm {
                    VmmChoice::Auto => NodeVmmChoice::Auto,
                    VmmChoice::Qemu => NodeVmmChoice::Qemu,
                    VmmChoice::Firecracker => NodeVmmChoice::Firecracker,
                },
                driver: None,
                accel: self.accel,
                qemu: self.qemu.clone(),
                firecracker: self.firecracker.clone(),
                jailer: self.jailer.clone(),
                jail: JailSettings {
                    enabled: !self.no_jail,
                    uid_base: self.vmm_uid_base,
                    uids: self.vmm_uids,
                    gid: self.vmm_gid,
                },
            },
            run_dir: self.run_dir.clone(),
            worker: WorkerLimits {
                max_vms: self.max_vms,
                boot_timeout: Duration::from_secs(self.boot_timeout),
                init_timeout: Duration::from_secs(self.init_timeout),
                pool_memory_mib: self.pool_memory_mib,
                keep_alive: Duration::from_secs(self.keep_alive),
                refill_parallelism: self.refill_parallelism,
                snapshot_disk_mib: (self.snapshot_disk_mib > 0).then_some(self.snapshot_disk_mib),
                max_queued: self.max_queued_invocations,
            },
            network: NetworkConfig {
                mode: network,
                vm_subnet: self.vm_subnet,
                spare_networks: self.spare_networks,
                dns: self.dns.clone(),
                egress_deny: self.egress_deny.clone(),
            },
            cluster: ClusterSettings {
                node_id: self.node_id.clone(),
                slots: self.slots,
                peers: self.peers.clone(),
                addr: self.cluster_addr,
                no_steal: self.no_steal,
                steal_probes: Some(self.steal_probes),
                lease: Some(Duration::from_millis(self.lease_ms)),
                tls,
                insecure: self.cluster_insecure,
            },
            http: HttpSettings {
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
                header_timeout: Duration::from_secs(self.header_timeout),
                body_timeout: Duration::from_secs(self.body_timeout),
                tls: match (&self.tls_cert, &self.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                },
            },
            images: ImageSettings {
                insecure_registries: self.insecure_registries.clone(),
                credentials: match &self.registry_auth_file {
                    Some(f) => registry_credentials(f)?,
                    None => Default::default(),
                },
                max_image_mib: self.max_image_mib,
                cache_mib: self.image_cache_mib,
                pull_timeout: Duration::from_secs(self.image_pull_timeout),
            },
            api: ApiSettings {
                dev: self.dev,
                max_concurrency: self.max_concurrency,
                min_unreserved: self.min_unreserved,
                async_retries: self.async_retries,
                async_retry_delay: Duration::from_millis(self.async_retry_delay_ms),
                max_queued_events: self.max_queued_events,
                max_event_age: Duration::from_secs(self.max_event_age),
                url_domain: self.url_domain.clone(),
                quotas: ignition_node::TenantQuotas {
                    functions: self.quota_functions,
                    versions: self.quota_versions,
                    code_mib: self.quota_code_mib,
                    queued_events: self.quota_queued_events,
                    concurrency: self.quota_concurrency,
                },
            },
        })
    }
}

/// Registry credentials from a Docker `config.json`: `auths.HOST.auth` (base64 of
/// `user:password`) or `auths.HOST.username` and `.password`.
fn registry_credentials(
    file: &std::path::Path,
) -> Result<std::collections::HashMap<String, ignition_oci::Credentials>> {
    use anyhow::Context;
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: std::collections::HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let config: DockerConfig = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a Docker config.json", file.display()))?;
    let mut out = std::collections::HashMap::new();
    for (host, e) in config.auths {
        // Docker writes Docker Hub's key as a URL.
        let host = host
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let (username, password) = match (e.auth, e.username, e.password) {
            (Some(a), _, _) => {
                let plain = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .with_context(|| {
                        format!("{}: the auth of {host} is not base64", file.display())
                    })?;
                let (u, p) = plain.split_once(':').with_context(|| {
                    format!(
                        "{}: the auth of {host} is not user:password",
                        file.display()
                    )
                })?;
                (u.to_owned(), p.to_owned())
            }
            (None, Some(u), Some(p)) => (u, p),
            _ => anyhow::bail!(
                "{}: {host} has neither auth nor username and password",
                file.display()
            ),
        };
        out.insert(host, ignition_oci::Credentials { username, password });
    }
    Ok(out)
}

pub(crate) fn run(args: ServerArgs) -> Result<ExitCode> {
    crate::cmd_bench::raise_fd_limit();
    let config = args.node_config()?;
    if let Err(unsafe_config) = config.check_safety() {
        eprintln!("error: {unsafe_config}");
        return Ok(ExitCode::from(2));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut node = ignition_node::start(config).await?;
        crate::service::notify_ready();
        tokio::select! {
            served = node.serving() => served?,
            () = shutdown_signal() => {}
        }
        crate::service::notify_stopping();
        node.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

fn parse_url_domain(s: &str) -> Result<String, String> {
    ignition_api::validate_url_domain(s).map(|()| s.to_owned())
}
