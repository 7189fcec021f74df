//! `ignition server`: one node with its embedded store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ignition_vmm::firecracker::{FirecrackerConfig, FirecrackerDriver};
use ignition_vmm::qemu::{QemuConfig, QemuDriver};
use ignition_vmm::Accel;
use ignition_worker::{PoolConfig, Worker, WorkerConfig};

use crate::{locate, CacheArgs};

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Where the store lives.
    #[arg(long, env = "IGNITION_DATA_DIR")]
    data_dir: Option<PathBuf>,
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
    #[arg(long, default_value = "auto")]
    jailer: String,
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
    /// This node's certificate (PEM), signed by --cluster-ca.
    #[arg(long, requires = "cluster_ca")]
    cluster_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "cluster_ca")]
    cluster_key: Option<PathBuf>,
    /// VM networking: `builtin` (a namespace, tap and veth per VM, egress enforced with
    /// nftables; needs root), `cni` (the namespace's interface made by CNI plugins, see
    /// --cni-conf; egress still enforced by Ignition) or `none` (no network interface).
    #[arg(long, default_value = "builtin")]
    network: NetworkMode,
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

pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Path::new(&d).join("ignition");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".local/share/ignition")
}

fn short_hash(data: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// A short, per-data-dir run directory: socket paths must stay under 108 bytes.
fn run_dir(data_dir: &Path) -> PathBuf {
    std::env::temp_dir().join(format!("ignition-{:08x}", short_hash(data_dir) as u32))
}

/// Four characters of `[a-z0-9]` naming this server's links and rules, stable for a run
/// directory so that a restarted server sweeps what its predecessor left.
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

pub(crate) fn run(args: ServerArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: ServerArgs) -> Result<ExitCode> {
    crate::cmd_bench::raise_fd_limit();
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let store = ignition_store::Store::open(&data_dir).context("opening the store")?;

    let cache_dir = args.cache.cache_dir();
    // With an agent at hand, build (idempotent and cheap when nothing changed) so a rebuilt
    // agent or a new kernel is picked up; without one, use whatever image the cache holds.
    let image = match locate::agent(args.cache.agent.as_deref()) {
        Ok(agent) => {
            let opts = ignition_image::BuildOptions {
                cache_dir: cache_dir.clone(),
                agent,
            };
            tokio::task::spawn_blocking(move || ignition_image::build(&opts))
                .await?
                .context("building the guest image")?
        }
        Err(no_agent) => ignition_image::load_current(&cache_dir).with_context(|| {
            format!(
                "no guest image in {} and no agent to build one: {no_agent:#}",
                cache_dir.display()
            )
        })?,
    };

    let run_dir = args.run_dir.clone().unwrap_or_else(|| run_dir(&data_dir));
    // VMs of an earlier server on this data dir died with it (PDEATHSIG); their sockets did not.
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // Both `auto` choices rest on one measurement of KVM, taken once.
    let kvm = (args.vmm == VmmChoice::Auto || args.accel == Accel::Auto)
        .then(|| ignition_vmm::doctor::probe_kvm(Duration::from_secs(5)).kind);
    let vmm = match (args.vmm, kvm) {
        (VmmChoice::Qemu, _) => "qemu",
        (VmmChoice::Firecracker, _) => "firecracker",
        (VmmChoice::Auto, Some(kvm)) => ignition_vmm::doctor::auto_vmm(&args.firecracker, kvm),
        (VmmChoice::Auto, None) => "qemu",
    };
    let accel = match (args.accel, kvm) {
        (Accel::Auto, Some(kvm)) => ignition_vmm::doctor::auto_accel(kvm),
        (accel, _) => accel,
    };
    if vmm == "firecracker" {
        let found = std::process::Command::new(&args.firecracker)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            anyhow::bail!(
                "--vmm firecracker: cannot run {} (install Firecracker or pass --firecracker PATH)",
                args.firecracker.display()
            );
        }
        if !Path::new("/dev/kvm").exists() {
            anyhow::bail!("--vmm firecracker needs KVM, and this host has no /dev/kvm");
        }
    }
    let users = Arc::new(ignition_vmm::jail::VmmUsers::new(
        args.vmm_uid_base,
        args.vmm_uids,
        args.vmm_gid,
    ));
    let (driver, sweep): (
        Arc<dyn ignition_vmm::VmmDriver>,
        Box<dyn Fn() + Send + Sync>,
    ) = if vmm == "firecracker" {
        let jailer = match args.jailer.as_str() {
            "none" => None,
            "auto" => ignition_vmm::firecracker::jailer::find(&args.firecracker),
            path => Some(PathBuf::from(path)),
        };
        let d = Arc::new(FirecrackerDriver::new(FirecrackerConfig {
            binary: args.firecracker.clone(),
            run_dir: run_dir.clone(),
            jail: !args.no_jail,
            users: Arc::clone(&users),
            jailer: jailer.clone(),
        }));
        tracing::info!(vmm, image = %image.id, jailer = ?jailer, "microVM driver ready");
        let s = Arc::clone(&d);
        (d, Box::new(move || s.sweep()))
    } else {
        let d = Arc::new(QemuDriver::new(QemuConfig {
            binary: args.qemu.clone(),
            accel,
            run_dir: run_dir.clone(),
            jail: !args.no_jail,
            users,
        }));
        tracing::info!(vmm, accel = d.accel().qemu_name(), image = %image.id, "microVM driver ready");
        let s = Arc::clone(&d);
        (d, Box::new(move || s.sweep()))
    };
    let cni = match (args.network, &args.cni_conf) {
        (NetworkMode::Cni, Some(conf)) => Some(
            ignition_net::CniConfig::load(conf, args.cni_bin_dirs.clone())
                .context("loading the CNI configuration")?,
        ),
        (NetworkMode::Cni, None) => anyhow::bail!("--network cni needs --cni-conf FILE"),
        (_, Some(_)) => anyhow::bail!("--cni-conf is for --network cni"),
        _ => None,
    };
    let network = match args.network {
        NetworkMode::None => None,
        NetworkMode::Builtin | NetworkMode::Cni => Some(
            ignition_net::Network::start(ignition_net::NetConfig {
                subnet: args.vm_subnet,
                cni,
                tag: network_tag(&run_dir),
                dns: args.dns.clone(),
                tap_group: args.vmm_gid,
                spares: args.spare_networks,
            })
            .await
            .context("setting up VM networking (needs root and nftables; --network none runs VMs without a network)")?,
        ),
    };
    if let Some(n) = &network {
        match args.network {
            NetworkMode::Cni => tracing::info!(table = n.table(), "VM networking ready (CNI)"),
            _ => {
                tracing::info!(subnet = %args.vm_subnet, table = n.table(), links = n.interface_prefix(), "VM networking ready")
            }
        }
    }
    let worker = Worker::new(
        Arc::clone(&driver),
        image,
        WorkerConfig {
            max_vms: args.max_vms,
            boot_timeout: Duration::from_secs(args.boot_timeout),
            load_timeout: Duration::from_secs(args.init_timeout),
            snapshot_dir: data_dir.join("snapshots"),
            pool: PoolConfig {
                memory_budget_mib: args.pool_memory_mib,
                keep_alive: Duration::from_secs(args.keep_alive),
                refill_parallelism: args
                    .refill_parallelism
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            },
            network: network.clone(),
        },
    );
    let node_id = args
        .node_id
        .clone()
        .unwrap_or_else(|| nix_hostname().unwrap_or_else(|| "node-1".to_owned()));
    let reserved = store
        .reserved_concurrency()
        .context("reading reserved concurrency")?;
    let store = Arc::new(store);
    let cluster_addr = args.cluster_addr.or_else(|| {
        (!args.peers.is_empty())
            .then(|| SocketAddr::new(args.listen.ip(), args.listen.port().wrapping_add(1)))
    });
    let tls = match (&args.cluster_ca, &args.cluster_cert, &args.cluster_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            Some(ignition_cluster::ClusterTls {
                ca: read(ca)?,
                cert: read(cert)?,
                key: read(key)?,
            })
        }
        _ => None,
    };
    if cluster_addr.is_some() && tls.is_none() {
        tracing::warn!("cluster traffic is neither authenticated nor encrypted (no --cluster-ca): keep --cluster-addr on a network only the nodes reach");
    }
    let cluster = cluster_addr.map(|addr| {
        let mut c = ignition_cluster::ClusterConfig::new(addr, args.peers.clone());
        c.steal = !args.no_steal;
        c.probes = args.steal_probes;
        c.lease = Duration::from_millis(args.lease_ms.max(400));
        c.tls = tls.clone();
        c
    });
    let node = ignition_cluster::Node::start(
        ignition_cluster::NodeConfig {
            node_id: node_id.clone(),
            slots: args.slots.unwrap_or(args.max_vms),
            cluster,
        },
        Arc::clone(&worker),
        Arc::clone(&store),
    )
    .await
    .context("starting the node")?;
    let state = ignition_api::AppState {
        store,
        worker: Arc::clone(&worker),
        node: Arc::clone(&node),
        node_id,
        metrics: Arc::new(ignition_api::Metrics::default()),
        concurrency: ignition_api::Concurrency::new(args.max_concurrency, reserved),
        dev_mode: args.dev,
        events: ignition_api::EventConfig {
            retries: args.async_retries,
            retry_delay: Duration::from_millis(args.async_retry_delay_ms),
            max_pending: args.max_queued_events,
            ..ignition_api::EventConfig::default()
        },
    };
    ignition_api::spawn_dispatcher(state.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    if args.dev {
        tracing::warn!("development mode: requests are not authenticated");
    }
    tracing::info!(listen = %args.listen, data_dir = %data_dir.display(), "ignition server ready");
    axum::serve(listener, ignition_api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    node.shutdown().await;
    worker.shutdown().await;
    // Destroys the pool spawned while shutting down get a moment to finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sweep();
    if let Some(n) = &network {
        n.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(ExitCode::SUCCESS)
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
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
