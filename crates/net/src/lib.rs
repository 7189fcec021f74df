//! A network of its own for every microVM, and the egress policy that bounds it.
//!
//! This crate owns the host side of VM networking: the node's address pool, one network
//! namespace per VM holding the VM's tap device and one end of a veth pair, the other end in
//! the host's namespace with the VM's gateway address, and the nftables rules that decide what
//! the VM may reach ([`nft`] says which). The VMM process joins the VM's namespace, so the tap
//! it opens exists nowhere else.
//!
//! Every guest has the same address ([`GUEST_SIDE`]): its namespace routes between the tap and
//! the veth and translates that address to and from the VM's own (connection tracking, with a
//! NAT table of the namespace's own: `nft::vm_side_nat`). So the guest's interface is
//! configured once, when the base snapshot is booted, and a VM restored from a snapshot starts
//! with a working network instead of configuring one (under TCG that took a restored guest
//! ~0.1-0.2 s of first-use code translation). The host, its rules and other VMs see only the
//! VM's own address.
//!
//! ```text
//!  guest eth0 ── tap0 (169.254.0.1/30)   VM netns                 host netns
//!  169.254.0.2   veth0 (.2/30, nat 169.254.0.2 <-> .2) ═══ ig<tag>-<n> (.1/30) ── nftables ── NAT
//! ```
//!
//! Links are made over rtnetlink ([`rtnetlink`]); the tap with the tun driver's ioctls. In CNI
//! mode ([`cni`]) the operator's CNI plugins give the namespace its interface instead, and the
//! tap is joined to it with a pair of tc redirects.
//! Everything a VM got is removed when it goes ([`VmNet::release`]); a server sweeps what a
//! crashed predecessor with the same tag left (links and its table).

mod addresses;
pub mod cni;
mod netns;
pub mod nft;
/// Egress rules are a domain type ([`ignition_types::egress`]); this crate enforces them.
pub use ignition_types::egress as policy;
pub mod protected;
mod spares;
mod tap;
mod vmside;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

pub use addresses::SlotAddrs;
pub use cni::CniConfig;
pub use policy::{parse_rules, EgressRule, Ipv4Net, PolicyError, Protocol};
pub use protected::{DeniedNet, EgressDeny, DEFAULT_EGRESS_DENY};

use addresses::AddressPool;
use nft::{Ruleset, VmPolicy};
use spares::{Spare, Spares};
use vmside::{build_vm_side, join_tap_to_eth0, link_err, link_index};

/// The tap device's name inside every VM's namespace (the same everywhere, so that VMs
/// restored from one snapshot see the same device configuration).
pub const TAP_NAME: &str = "tap0";

/// Why a VM's network could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Making or entering a namespace failed.
    #[error("network namespace: {0}")]
    Namespace(String),
    /// A link, address or route operation failed.
    #[error("network link: {0}")]
    Link(String),
    /// nftables refused the rules.
    #[error("nftables: {0}")]
    Nft(String),
    /// The VM subnet has no free addresses.
    #[error("no free VM address in {0} (raise --vm-subnet's size or lower --max-vms)")]
    Exhausted(Ipv4Net),
    /// The configuration is unusable.
    #[error("network configuration: {0}")]
    Config(String),
    /// A CNI plugin failed or its configuration is unusable.
    #[error("CNI: {0}")]
    Cni(String),
}

/// How the node's VM networking is set up.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Where VM addresses come from (a /30 each); unused in CNI mode.
    pub subnet: Ipv4Net,
    /// Give VMs their interface with these CNI plugins instead of Ignition's own links.
    pub cni: Option<CniConfig>,
    /// A short tag (up to 4 characters, `[a-z0-9]`) that keeps this server's links and rules apart
    /// from other servers' on the same host.
    pub tag: String,
    /// DNS resolvers offered to guests whose policy reaches them; empty: the host's own
    /// (from `/etc/resolv.conf`, loopback resolvers left out).
    pub dns: Vec<Ipv4Addr>,
    /// The group whose processes (the jailed VMMs) may attach to VMs' tap devices.
    pub tap_group: u32,
    /// Built-in networks kept made ahead of need (see the `spares` module); 0: each is made on its VM's
    /// path. Unused in CNI mode.
    pub spares: usize,
    /// What no VM reaches, whatever its policy ([`protected`]).
    pub deny: EgressDeny,
}

/// The address side of a guest's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSide {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Its gateway.
    pub gateway: Ipv4Addr,
}

/// The guest side of every built-in VM network, the same in every VM. Link-local: it never
/// leaves the VM's namespace, so it collides with no destination a function may want (and
/// metadata services' 169.254.169.254 is outside it).
pub const GUEST_SIDE: GuestSide = GuestSide {
    address: Ipv4Addr::new(169, 254, 0, 2),
    prefix_len: 30,
    gateway: Ipv4Addr::new(169, 254, 0, 1),
};

/// The address configuration a guest applies to its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway (in a built-in network, the VM namespace's end of the tap).
    pub gateway: Ipv4Addr,
    /// Resolvers the guest's policy allows it to reach.
    pub dns: Vec<Ipv4Addr>,
}

/// Counters of the node's VM networks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// The nftables table holding this node's rules.
    pub table: String,
    /// Host interfaces of this node's VMs are named with this prefix.
    pub interface_prefix: String,
    /// VM networks that exist now.
    pub active: u32,
    /// Spare networks ready for a VM (made ahead, not yet used).
    pub spares: u32,
    /// Networks made since start.
    pub attached: u64,
    /// Networks removed since start.
    pub released: u64,
    /// Time to make the last one (namespace, tap, links, addresses, rules), µs.
    pub last_setup_us: u64,
}

/// Who gives VMs their links and addresses.
#[derive(Debug)]
enum Mode {
    /// Ignition: a veth pair per VM, a /30 from the pool.
    Builtin(Mutex<AddressPool>),
    /// The operator's CNI plugins.
    Cni {
        config: CniConfig,
        next: AtomicU32,
        active: AtomicU32,
    },
}

/// What a VM's link came from, as needed to remove it.
#[derive(Debug, Clone)]
enum Link {
    Builtin,
    Cni(Arc<cni::CniLink>),
}

/// The node's VM networking.
#[derive(Debug)]
pub struct Network {
    rules: Ruleset,
    deny: EgressDeny,
    /// The node's addresses as the rules hold them now.
    node_addrs: Mutex<Vec<Ipv4Addr>>,
    /// Cluster peers learned since the start (by gossip), denied like the node's own.
    peers: Mutex<Vec<Ipv4Addr>>,
    if_prefix: String,
    tag: String,
    mode: Mode,
    host: Handle,
    host_ns: OwnedFd,
    resolvers: Vec<Ipv4Addr>,
    tap_group: u32,
    spare_target: usize,
    spares: Mutex<Spares>,
    attached: AtomicU64,
    released: AtomicU64,
    last_setup_us: AtomicU64,
}

/// One VM's network. Call [`VmNet::release`] after the VM is gone; dropping it releases in the
/// background.
#[derive(Debug)]
pub struct VmNet {
    network: Arc<Network>,
    index: u32,
    link: Link,
    host_if: String,
    netns: Arc<OwnedFd>,
    guest: GuestNetwork,
    /// The VM's address as the host and other VMs see it.
    address: Ipv4Addr,
    /// The set of its tenant's VM addresses.
    tenant_set: String,
    released: bool,
    /// This is the copy a drop handed its release to ([`Drop`] says why it matters).
    handed_over: bool,
    setup_us: u64,
}

fn host_resolvers() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// An all-zero network, for messages about a mode without a subnet.
const ZERO_NET: Ipv4Net = Ipv4Net::ZERO;

impl Network {
    /// Sets up the node's networking: IPv4 forwarding on, leftovers of an earlier server with the
    /// same tag removed, the nftables table installed.
    pub async fn start(config: NetConfig) -> Result<Arc<Self>, NetError> {
        let tag_ok = !config.tag.is_empty()
            && config.tag.len() <= 4
            && config
                .tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !tag_ok {
            return Err(NetError::Config(format!(
                "tag {:?} must be 1-4 characters of [a-z0-9]",
                config.tag
            )));
        }
        let mode = match config.cni.clone() {
            Some(config) => Mode::Cni {
                config,
                next: AtomicU32::new(0),
                active: AtomicU32::new(0),
            },
            None => Mode::Builtin(Mutex::new(AddressPool::new(config.subnet).ok_or_else(
                || NetError::Config(format!("VM subnet {} is smaller than a /30", config.subnet)),
            )?)),
        };
        let host_ns = netns::current()?;
        let (conn, host, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Link(format!("netlink socket: {e}")))?;
        tokio::spawn(conn);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
            NetError::Config(format!(
                "cannot enable IPv4 forwarding (VM networking needs root): {e}"
            ))
        })?;
        let resolvers = if config.dns.is_empty() {
            host_resolvers()
        } else {
            config.dns.clone()
        };
        let if_prefix = format!("ig{}-", config.tag);
        let subnet = matches!(mode, Mode::Builtin(_)).then_some(config.subnet);
        let deny = match subnet {
            Some(subnet) => config.deny.clone().with_vm_subnet(subnet, &if_prefix),
            None => config.deny.clone(),
        };
        let node_addrs = deny.node_addresses();
        let net = Arc::new(Self {
            rules: Ruleset {
                table: format!("ignition_{}", config.tag),
                subnet,
                denied: deny.v4(),
                resolvers: resolvers.clone(),
            },
            deny,
            node_addrs: Mutex::new(node_addrs.clone()),
            peers: Mutex::new(Vec::new()),
            if_prefix,
            tag: config.tag.clone(),
            mode,
            host,
            host_ns,
            resolvers,
            tap_group: config.tap_group,
            spare_target: config.spares,
            spares: Mutex::new(Spares::default()),
            attached: AtomicU64::new(0),
            released: AtomicU64::new(0),
            last_setup_us: AtomicU64::new(0),
        });
        net.sweep_links().await;
        let base = net.rules.base(&node_addrs);
        tokio::task::spawn_blocking(move || nft::apply(&base))
            .await
            .map_err(|e| NetError::Nft(format!("nft task: {e}")))??;
        net.refill_spares();
        net.follow_node_addresses();
        Ok(net)
    }

    /// Keeps the rules' set of the node's own addresses equal to its interfaces' as they
    /// change (an address added by DHCP, a new interface), checked every two seconds.
    fn follow_node_addresses(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let Some(net) = weak.upgrade() else { return };
                let mut now = net.deny.node_addresses();
                now.extend(net.peers.lock().unwrap_or_else(|p| p.into_inner()).iter());
                now.sort();
                now.dedup();
                let changed = {
                    let mut held = net.node_addrs.lock().unwrap_or_else(|p| p.into_inner());
                    (*held != now).then(|| std::mem::replace(&mut *held, now.clone()))
                };
                if changed.is_some() {
                    let script = net.rules.set_node_addrs(&now);
                    match tokio::task::spawn_blocking(move || nft::apply(&script)).await {
                        Ok(Ok(())) => {
                            tracing::info!(addresses = ?now, "the node's addresses changed; denied to VMs")
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "updating the node's addresses"),
                        Err(e) => tracing::warn!(error = %e, "nft task"),
                    }
                }
            }
        });
    }

    /// Denies VMs these cluster peers too (from the next refresh, within 2 s), beside the ones
    /// the node was started with.
    pub fn deny_peers(&self, peers: Vec<Ipv4Addr>) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// What no VM of this node reaches, and why a rule is refused at deploy.
    pub fn egress_deny(&self) -> &EgressDeny {
        &self.deny
    }

    /// The nftables table this node's rules live in.
    pub fn table(&self) -> &str {
        &self.rules.table
    }

    /// Host-side interface names of this node's VMs start with this.
    pub fn interface_prefix(&self) -> &str {
        &self.if_prefix
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        NetStats {
            table: self.rules.table.clone(),
            interface_prefix: self.if_prefix.clone(),
            active: match &self.mode {
                Mode::Builtin(_) => u32::try_from(
                    self.attached
                        .load(Ordering::Relaxed)
                        .saturating_sub(self.released.load(Ordering::Relaxed)),
                )
                .unwrap_or(u32::MAX),
                Mode::Cni { active, .. } => active.load(Ordering::Relaxed),
            },
            spares: u32::try_from(self.lock_spares().ready()).unwrap_or(u32::MAX),
            attached: self.attached.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            last_setup_us: self.last_setup_us.load(Ordering::Relaxed),
        }
    }

    /// Deletes host links with this node's prefix (a crashed server's, or, at shutdown, any a
    /// VM left behind).
    async fn sweep_links(&self) {
        let mut links = self.host.link().get().execute();
        let mut stale = Vec::new();
        while let Ok(Some(l)) = links.try_next().await {
            let name = l.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if name.is_some_and(|n| n.starts_with(&self.if_prefix)) {
                stale.push(l.header.index);
            }
        }
        for index in stale {
            let _ = self.host.link().del(index).execute().await;
        }
    }

    /// Makes a network for one VM of `tenant` with `egress` as its policy.
    pub async fn attach(
        self: &Arc<Self>,
        egress: &[EgressRule],
        tenant: &str,
    ) -> Result<VmNet, NetError> {
        let started = Instant::now();
        let mut vm = match &self.mode {
            Mode::Builtin(_) => {
                let spare = self.lock_spares().take();
                self.refill_spares();
                let spare = match spare {
                    Some(s) => s,
                    None => {
                        let slot = self.take_address().ok_or_else(|| {
                            NetError::Exhausted(self.rules.subnet.unwrap_or(ZERO_NET))
                        })?;
                        self.make_links(slot).await?
                    }
                };
                self.builtin_vm(spare, egress)
            }
            Mode::Cni { config, next, .. } => {
                let index = next.fetch_add(1, Ordering::Relaxed);
                self.attach_cni(config, index, egress).await?
            }
        };
        vm.tenant_set = nft::tenant_set(tenant);
        self.attached.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.install_policy(&vm, egress).await {
            vm.release().await;
            return Err(e);
        }
        vm.setup_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_setup_us.store(vm.setup_us, Ordering::Relaxed);
        Ok(vm)
    }

    /// What a guest of a built-in network configures, with `egress` as its policy. `None` in
    /// CNI mode, where each guest takes the address its plugins give it.
    pub fn shared_guest_network(&self, egress: &[EgressRule]) -> Option<GuestNetwork> {
        matches!(self.mode, Mode::Builtin(_)).then(|| self.guest_network(egress))
    }

    fn guest_network(&self, egress: &[EgressRule]) -> GuestNetwork {
        GuestNetwork {
            address: GUEST_SIDE.address,
            prefix_len: GUEST_SIDE.prefix_len,
            gateway: GUEST_SIDE.gateway,
            dns: self.guest_dns(&[], egress),
        }
    }

    fn guest_dns(&self, offered: &[Ipv4Addr], egress: &[EgressRule]) -> Vec<Ipv4Addr> {
        let candidates = if offered.is_empty() {
            &self.resolvers
        } else {
            offered
        };
        candidates
            .iter()
            .copied()
            .filter(|r| egress.iter().any(|rule| rule.allows(*r, 53, false)))
            .collect()
    }

    fn lock_spares(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_address(&self) -> Option<SlotAddrs> {
        match &self.mode {
            Mode::Builtin(pool) => pool.lock().unwrap_or_else(|p| p.into_inner()).take(),
            Mode::Cni { .. } => None,
        }
    }

    /// Starts making spares up to the target, in the background.
    fn refill_spares(self: &Arc<Self>) {
        if !matches!(self.mode, Mode::Builtin(_)) {
            return;
        }
        let missing = self.lock_spares().start_making(self.spare_target);
        for _ in 0..missing {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let made = match me.take_address() {
                    Some(slot) => match me.make_links(slot).await {
                        Ok(spare) => Some(spare),
                        Err(e) => {
                            tracing::warn!(error = %e, "making a spare VM network");
                            None
                        }
                    },
                    // Every address is in use: VMs need them more than spares do.
                    None => None,
                };
                let late = me.lock_spares().made(made);
                if let Some(spare) = late {
                    me.remove_links(&spare.host_if, spare.slot.index).await;
                }
            });
        }
    }

    /// A namespace with the tap, veth, addresses, route and translation, and the host end
    /// configured; no policy yet.
    async fn make_links(self: &Arc<Self>, slot: SlotAddrs) -> Result<Spare, NetError> {
        let host_if = format!("{}{}", self.if_prefix, slot.index);
        let (host_ns, group) = (self.host_ns.as_raw_fd(), self.tap_group);
        let made = {
            let host_if = host_if.clone();
            netns::create(move || build_vm_side(&host_if, host_ns, group, slot)).await
        };
        let netns = match made {
            Ok((fd, ())) => Arc::new(fd),
            Err(e) => {
                self.give_back(slot.index);
                return Err(e);
            }
        };
        if let Err(e) = self.configure_host_side(&host_if, slot.host).await {
            self.remove_links(&host_if, slot.index).await;
            return Err(e);
        }
        Ok(Spare {
            slot,
            host_if,
            netns,
        })
    }

    /// Deletes a built-in network's host link (its namespace goes with its last descriptor)
    /// and frees its address.
    async fn remove_links(&self, host_if: &str, index: u32) {
        // Deleting one end of a veth pair deletes both; the namespace (tap, veth end) goes when
        // its last holder (the caller's descriptor, the VMM) does.
        if let Ok(link) = link_index(&self.host, host_if).await {
            if let Err(e) = self.host.link().del(link).execute().await {
                tracing::warn!(vm_if = %host_if, error = %e, "deleting the VM link");
            }
        }
        self.give_back(index);
    }

    fn builtin_vm(self: &Arc<Self>, spare: Spare, egress: &[EgressRule]) -> VmNet {
        VmNet {
            network: Arc::clone(self),
            index: spare.slot.index,
            link: Link::Builtin,
            host_if: spare.host_if,
            netns: spare.netns,
            guest: self.guest_network(egress),
            address: spare.slot.guest,
            tenant_set: String::new(),
            released: false,
            handed_over: false,
            setup_us: 0,
        }
    }

    async fn attach_cni(
        self: &Arc<Self>,
        config: &CniConfig,
        index: u32,
        egress: &[EgressRule],
    ) -> Result<VmNet, NetError> {
        let group = self.tap_group;
        let (fd, ()) = netns::create(move || tap::create_persistent(TAP_NAME, group)).await?;
        let netns = Arc::new(fd);
        let id = format!("ignition-{}-{index}", self.tag);
        let path = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
        let added = {
            let (config, id, path) = (config.clone(), id.clone(), path.clone());
            tokio::task::spawn_blocking(move || config.add(&id, &path))
                .await
                .map_err(|e| NetError::Cni(format!("CNI task: {e}")))?
        }?;
        if let Mode::Cni { active, .. } = &self.mode {
            active.fetch_add(1, Ordering::Relaxed);
        }
        let mut vm = VmNet {
            network: Arc::clone(self),
            index,
            host_if: added.host_if.clone(),
            netns: Arc::clone(&netns),
            guest: GuestNetwork {
                address: added.address,
                prefix_len: added.prefix_len,
                gateway: added.gateway,
                dns: self.guest_dns(&added.dns, egress),
            },
            address: added.address,
            link: Link::Cni(Arc::new(added)),
            tenant_set: String::new(),
            released: false,
            handed_over: false,
            setup_us: 0,
        };
        let joined = async {
            let host_if = vm.host_if.clone();
            let bridged = std::path::Path::new("/sys/class/net")
                .join(&host_if)
                .join("master")
                .exists();
            if bridged {
                return Err(NetError::Cni(format!(
                    "the host end {host_if} is a bridge port: VMs would share an L2 segment below the host's firewall; use a routed plugin such as ptp"
                )));
            }
            netns::enter(&netns, join_tap_to_eth0).await
        }
        .await;
        if let Err(e) = joined {
            vm.release().await;
            return Err(e);
        }
        Ok(vm)
    }

    async fn configure_host_side(&self, host_if: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
        let index = link_index(&self.host, host_if).await?;
        // No IPv6 on the host end: no link-local address for a guest to talk to.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"),
            "1",
        );
        self.host
            .address()
            .add(index, IpAddr::V4(gateway), 30)
            .execute()
            .await
            .map_err(link_err("add the gateway address"))?;
        self.host
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(link_err("set the host link up"))
    }

    async fn install_policy(&self, vm: &VmNet, egress: &[EgressRule]) -> Result<(), NetError> {
        let script = self.rules.add_vm(&VmPolicy {
            index: vm.index,
            host_if: &vm.host_if,
            guest: vm.address,
            rules: egress,
            tenant_set: &vm.tenant_set,
            dns: &vm.guest.dns,
        });
        tokio::task::spawn_blocking(move || nft::apply(&script))
            .await
            .map_err(|e| NetError::Nft(format!("nft task: {e}")))?
    }

    fn give_back(&self, index: u32) {
        if let Mode::Builtin(pool) = &self.mode {
            pool.lock()
                .unwrap_or_else(|p| p.into_inner())
                .give_back(index);
        }
    }

    /// Removes this node's spares, links and table. Call after every VM is gone.
    pub async fn shutdown(&self) {
        let spares = self.lock_spares().close();
        for spare in spares {
            self.remove_links(&spare.host_if, spare.slot.index).await;
        }
        // Spares still being made are removed by their makers; wait for them (bounded: the
        // sweep below removes their links if they take longer).
        for _ in 0..200 {
            if self.lock_spares().making() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.sweep_links().await;
        let script = self.rules.teardown();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || nft::apply(&script)).await {
            tracing::warn!(error = %e, "could not remove the nftables table");
        }
    }
}

impl VmNet {
    /// The VM's namespace: the VMM process joins it before it opens [`TAP_NAME`].
    pub fn netns(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.netns)
    }

    /// What the guest configures.
    pub fn guest(&self) -> &GuestNetwork {
        &self.guest
    }

    /// How long making this network took (namespace, tap, links, addresses, rules), µs.
    pub fn setup_us(&self) -> u64 {
        self.setup_us
    }

    /// The VM's address as the host and other VMs see it (in a built-in network, the guest's
    /// own address is [`GUEST_SIDE`]'s, translated to this one in the VM's namespace).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The host end of the VM's link.
    pub fn host_interface(&self) -> &str {
        &self.host_if
    }

    /// Removes the VM's rules, links and namespace and frees its address. Idempotent.
    pub async fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let net = Arc::clone(&self.network);
        let script = net
            .rules
            .remove_vm(self.index, &self.host_if, self.address, &self.tenant_set);
        match tokio::task::spawn_blocking(move || nft::apply(&script)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(vm_if = %self.host_if, error = %e, "removing VM rules"),
            Err(e) => tracing::warn!(error = %e, "nft task"),
        }
        match (&self.link, &net.mode) {
            (Link::Builtin, _) => net.remove_links(&self.host_if, self.index).await,
            (Link::Cni(link), Mode::Cni { config, active, .. }) => {
                let id = format!("ignition-{}-{}", net.tag, self.index);
                let path = format!("/proc/{}/fd/{}", std::process::id(), self.netns.as_raw_fd());
                let (config, link) = (config.clone(), Arc::clone(link));
                let deleted =
                    tokio::task::spawn_blocking(move || config.del(&id, &path, &link.result)).await;
                if let Ok(Err(e)) = deleted {
                    tracing::warn!(vm_if = %self.host_if, error = %e, "CNI DEL");
                }
                active.fetch_sub(1, Ordering::Relaxed);
            }
            (Link::Cni(_), Mode::Builtin(_)) => {}
        }
        net.released.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks the CNI plugins whether the VM's network is still as they made it (`CHECK`);
    /// built-in networks always are.
    pub async fn check(&self) -> Result<(), NetError> {
        let (Link::Cni(link), Mode::Cni { config, .. }) = (&self.link, &self.network.mode) else {
            return Ok(());
        };
        let id = format!("ignition-{}-{}", self.network.tag, self.index);
        let path = format!("/proc/{}/fd/{}", std::process::id(), self.netns.as_raw_fd());
        let (config, link) = (config.clone(), Arc::clone(link));
        tokio::task::spawn_blocking(move || config.check(&id, &path, &link.result))
            .await
            .map_err(|e| NetError::Cni(format!("CNI task: {e}")))?
    }
}

impl Drop for VmNet {
    /// Releases in the background. The copy that does so is marked `handed_over`: a runtime
    /// shutting down drops a spawned task without running it, and that copy's drop must then
    /// end there (the next start's sweep removes the links), not hand over again, which would
    /// recurse until the stack overflowed (#19: a node stopping with a pool still filling
    /// aborted that way).
    fn drop(&mut self) {
        if self.released || self.handed_over {
            if !self.released {
                tracing::debug!(vm_if = %self.host_if, "VM network left to the next sweep (the runtime stopped)");
            }
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(vm_if = %self.host_if, "VM network dropped outside a runtime; left to the next sweep");
            return;
        };
        let mut me = VmNet {
            network: Arc::clone(&self.network),
            index: self.index,
            link: self.link.clone(),
            host_if: std::mem::take(&mut self.host_if),
            netns: Arc::clone(&self.netns),
            guest: self.guest.clone(),
            address: self.address,
            tenant_set: std::mem::take(&mut self.tenant_set),
            released: false,
            handed_over: true,
            setup_us: self.setup_us,
        };
        self.released = true;
        rt.spawn(async move { me.release().await });
    }
}
