//! The egress policy as nftables rules, and their application with `nft -f -`.
//!
//! nftables rather than iptables: one table of Ignition's own (`inet ignition_<tag>`) holds
//! everything, so Ignition never edits rules it does not own; each change is one atomic
//! transaction; and per-VM policies hang off verdict maps keyed by the VM's host interface, so
//! the base chains do one lookup however many VMs run. The rules live in the host's namespace,
//! where nothing in a guest can reach them.
//!
//! What the base chains enforce, for packets arriving from a VM's link, in this order:
//! - established flows pass;
//! - DNS (port 53) to the resolvers guests are given passes by the VM's rules, whatever range
//!   the resolvers are in;
//! - another VM's address passes only by a rule naming that one address (a /32), and only
//!   between VMs of one tenant (a set of addresses per tenant);
//! - the node itself (every address of its interfaces, followed as they change), its cluster
//!   peers and its listen addresses: dropped, whatever the rules;
//! - the denied ranges (`--egress-deny`, and the VM subnet): dropped, whatever the rules;
//! - anything else passes by any of the VM's rules; what no rule allows, IPv6 included, is
//!   dropped;
//! - input (the host itself): only DNS to a resolver on the host, by the VM's rules;
//! - towards a VM: only replies (no inbound connections); an address of the VM subnet that no
//!   VM holds is never routed anywhere else;
//! - postrouting: allowed traffic leaving the node is masqueraded.
//!
//! Each VM's chains first drop packets whose source is not the VM's own address, so a guest
//! cannot borrow another VM's identity.
//!
//! Applying a change costs one `nft` process (a few ms); it happens when a VM's network is
//! prepared (for warm slots: ahead of any invocation), never on the invoke path.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::policy::{EgressRule, Ipv4Net, Protocol};
use crate::NetError;

/// Names of one node's rules.
#[derive(Debug, Clone)]
pub(crate) struct Ruleset {
    /// `ignition_<tag>`.
    pub(crate) table: String,
    /// The VM subnet the node assigns addresses from (built-in mode); with CNI the plugins'
    /// IPAM assigns them and each VM's address is protected one by one.
    pub(crate) subnet: Option<Ipv4Net>,
    /// The denied ranges (the VM subnet among them).
    pub(crate) denied: Vec<Ipv4Net>,
    /// The resolvers guests may be given.
    pub(crate) resolvers: Vec<Ipv4Addr>,
}

/// One VM's policy.
#[derive(Debug, Clone)]
pub(crate) struct VmPolicy<'a> {
    pub(crate) index: u32,
    pub(crate) host_if: &'a str,
    pub(crate) guest: Ipv4Addr,
    pub(crate) rules: &'a [EgressRule],
    /// The set of the addresses of the VMs of the VM's tenant ([`tenant_set`]).
    pub(crate) tenant_set: &'a str,
    /// The resolvers the guest is given (reachable on port 53 whatever their range).
    pub(crate) dns: &'a [Ipv4Addr],
}

/// The name of the set of a tenant's VM addresses: `t_` and the tenant's name where it is of
/// `[a-z0-9]` (tenant names are), else a hash of it.
pub(crate) fn tenant_set(tenant: &str) -> String {
    if !tenant.is_empty()
        && tenant.len() <= 32
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        format!("t_{tenant}")
    } else {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.hash(&mut h);
        format!("t_x{:016x}", h.finish())
    }
}

fn elements<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(
            " elements = {{ {} }};",
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn rule_match(r: &EgressRule) -> String {
    let ports = if r.first_port == r.last_port {
        r.first_port.to_string()
    } else {
        format!("{}-{}", r.first_port, r.last_port)
    };
    let l4 = match r.protocol {
        Protocol::Tcp => format!("tcp dport {ports}"),
        Protocol::Udp => format!("udp dport {ports}"),
        Protocol::Both => format!("meta l4proto {{ tcp, udp }} th dport {ports}"),
    };
    format!("ip daddr {} {l4}", r.net)
}

impl Ruleset {
    /// The whole table, replacing any table of the same name (left by an earlier server).
    /// VMs are recognized by their host-side interface (set `vm_ifs`), whatever named it.
    pub(crate) fn base(&self, node_addrs: &[Ipv4Addr]) -> String {
        let t = &self.table;
        let denied = elements(&self.denied);
        let node = elements(node_addrs);
        let resolvers = elements(&self.resolvers);
        let (unassigned, nat) = match self.subnet {
            Some(net) => (
                format!("\n    ip daddr {net} oifname != @vm_ifs drop"),
                format!("\n    ip saddr {net} oifname != @vm_ifs masquerade"),
            ),
            // With CNI the plugins' IPAM decides addresses; NAT follows the VMs' own.
            None => (
                String::new(),
                "\n    ip saddr @vm_addrs oifname != @vm_ifs masquerade".to_owned(),
            ),
        };
        format!(
            "add table inet {t}
delete table inet {t}
table inet {t} {{
  set denied {{ type ipv4_addr; flags interval; auto-merge;{denied} }}
  set node_addrs {{ type ipv4_addr;{node} }}
  set resolvers {{ type ipv4_addr;{resolvers} }}
  set vm_ifs {{ type ifname; }}
  set vm_addrs {{ type ipv4_addr; }}
  map general {{ type ifname : verdict; }}
  map explicit {{ type ifname : verdict; }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    iifname @vm_ifs ct state established,related accept
    oifname @vm_ifs ct state established,related accept{unassigned}
    iifname @vm_ifs ip daddr @resolvers meta l4proto {{ tcp, udp }} th dport 53 iifname vmap @general
    iifname @vm_ifs ip daddr @vm_addrs iifname vmap @explicit
    iifname @vm_ifs ip daddr @node_addrs drop
    iifname @vm_ifs ip daddr @denied drop
    iifname @vm_ifs iifname vmap @general
    iifname @vm_ifs drop
    oifname @vm_ifs drop
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname @vm_ifs ct state established,related accept
    iifname @vm_ifs ip daddr @resolvers meta l4proto {{ tcp, udp }} th dport 53 iifname vmap @general
    iifname @vm_ifs drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;{nat}
  }}
}}
"
        )
    }

    /// Replaces the node's own addresses (they change with its interfaces).
    pub(crate) fn set_node_addrs(&self, addrs: &[Ipv4Addr]) -> String {
        let t = &self.table;
        let mut s = format!("flush set inet {t} node_addrs\n");
        if !addrs.is_empty() {
            let list = addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(s, "add element inet {t} node_addrs {{ {list} }}");
        }
        s
    }

    /// Removes the table.
    pub(crate) fn teardown(&self) -> String {
        format!(
            "add table inet {t}\ndelete table inet {t}\n",
            t = self.table
        )
    }

    /// Adds one VM's chains and map entries.
    pub(crate) fn add_vm(&self, vm: &VmPolicy<'_>) -> String {
        let t = &self.table;
        let tenant = vm.tenant_set;
        let mut s = format!("add set inet {t} {tenant} {{ type ipv4_addr; }}\n");
        for (chain, explicit_only) in [
            (format!("vm-{}", vm.index), false),
            (format!("vmx-{}", vm.index), true),
        ] {
            let _ = writeln!(s, "add chain inet {t} {chain}");
            let _ = writeln!(s, "flush chain inet {t} {chain}");
            let _ = writeln!(s, "add rule inet {t} {chain} ip saddr != {} drop", vm.guest);
            if explicit_only {
                // Another VM is reached only within one tenant.
                let _ = writeln!(s, "add rule inet {t} {chain} ip daddr != @{tenant} drop");
            }
            for r in vm
                .rules
                .iter()
                .filter(|r| !explicit_only || r.net.is_single())
            {
                let _ = writeln!(s, "add rule inet {t} {chain} {} accept", rule_match(r));
            }
            let _ = writeln!(s, "add rule inet {t} {chain} drop");
        }
        let _ = writeln!(s, "add element inet {t} vm_ifs {{ \"{}\" }}", vm.host_if);
        let _ = writeln!(s, "add element inet {t} vm_addrs {{ {} }}", vm.guest);
        let _ = writeln!(s, "add element inet {t} {tenant} {{ {} }}", vm.guest);
        if !vm.dns.is_empty() {
            let dns: Vec<String> = vm.dns.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "add element inet {t} resolvers {{ {} }}", dns.join(", "));
        }
        let _ = writeln!(
            s,
            "add element inet {t} general {{ \"{}\" : jump vm-{} }}",
            vm.host_if, vm.index
        );
        let _ = writeln!(
            s,
            "add element inet {t} explicit {{ \"{}\" : jump vmx-{} }}",
            vm.host_if, vm.index
        );
        s
    }

    /// Removes one VM's set and map entries and its chains.
    pub(crate) fn remove_vm(
        &self,
        index: u32,
        host_if: &str,
        guest: Ipv4Addr,
        tenant_set: &str,
    ) -> String {
        let t = &self.table;
        format!(
            "delete element inet {t} vm_ifs {{ \"{host_if}\" }}
delete element inet {t} vm_addrs {{ {guest} }}
delete element inet {t} {tenant_set} {{ {guest} }}
delete element inet {t} general {{ \"{host_if}\" }}
delete element inet {t} explicit {{ \"{host_if}\" }}
flush chain inet {t} vm-{index}
delete chain inet {t} vm-{index}
flush chain inet {t} vmx-{index}
delete chain inet {t} vmx-{index}
"
        )
    }
}

/// The rules of a built-in VM namespace (not the host's): connections the guest opens leave
/// with the VM's address `vm` instead of the shared guest address, and connections to `vm`
/// reach the guest; replies are translated back by connection tracking. Policy is not here:
/// the host's rules see only `vm` and decide.
pub(crate) fn vm_side_nat(vm: Ipv4Addr) -> String {
    let guest = crate::GUEST_SIDE.address;
    format!(
        "table ip ignition_vm {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    iifname \"veth0\" ip daddr {vm} dnat to {guest}
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    oifname \"veth0\" ip saddr {guest} snat to {vm}
  }}
}}
"
    )
}

/// Runs `script` as one `nft` transaction.
pub(crate) fn apply(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft(format!("cannot run nft (install nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Nft(format!("write to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(format!("wait for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(format!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs() -> Ruleset {
        Ruleset {
            table: "ignition_t1".into(),
            subnet: Some("10.200.0.0/16".parse().unwrap()),
            denied: ["10.0.0.0/8", "169.254.0.0/16", "10.200.0.0/16"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            resolvers: vec!["10.0.0.53".parse().unwrap()],
        }
    }

    #[test]
    fn base_table_guards_host_vms_and_inbound() {
        let b = rs().base(&["192.0.2.7".parse().unwrap()]);
        assert!(b.contains("set denied { type ipv4_addr; flags interval; auto-merge; elements = { 10.0.0.0/8, 169.254.0.0/16, 10.200.0.0/16 }; }"), "{b}");
        assert!(
            b.contains("set node_addrs { type ipv4_addr; elements = { 192.0.2.7 }; }"),
            "{b}"
        );
        let order: Vec<usize> = [
            "ip daddr @resolvers meta l4proto { tcp, udp } th dport 53 iifname vmap @general",
            "ip daddr @vm_addrs iifname vmap @explicit",
            "ip daddr @node_addrs drop",
            "ip daddr @denied drop",
            "iifname @vm_ifs iifname vmap @general",
        ]
        .iter()
        .map(|r| b.find(r).unwrap_or_else(|| panic!("{r} missing: {b}")))
        .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "DNS, VMs, node, denied, then the rules"
        );
        assert!(b.contains("chain input {"));
        assert!(
            !b[b.find("chain input").unwrap()..].contains("vmap @explicit"),
            "no rule opens the host"
        );
        assert!(b.contains("oifname @vm_ifs drop"));
        assert!(b.contains("ip daddr 10.200.0.0/16 oifname != @vm_ifs drop"));
        assert!(b.contains("ip saddr 10.200.0.0/16 oifname != @vm_ifs masquerade"));
        let cni = Ruleset {
            subnet: None,
            ..rs()
        }
        .base(&[]);
        assert!(cni.contains("ip saddr @vm_addrs oifname != @vm_ifs masquerade"));
        assert!(cni.contains("set node_addrs { type ipv4_addr; }"));
        let update = rs().set_node_addrs(&["192.0.2.8".parse().unwrap()]);
        assert_eq!(update, "flush set inet ignition_t1 node_addrs\nadd element inet ignition_t1 node_addrs { 192.0.2.8 }\n");
    }

    #[test]
    fn vm_chains_check_the_source_and_keep_broad_rules_off_protected_destinations() {
        let rules: Vec<EgressRule> = ["198.18.0.2/32:8080/tcp", "0.0.0.0/0:443", "1.1.1.1:53/udp"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let s = rs().add_vm(&VmPolicy {
            index: 7,
            host_if: "igt1-7",
            guest: "10.200.0.30".parse().unwrap(),
            rules: &rules,
            tenant_set: &tenant_set("acme"),
            dns: &[],
        });
        let rules_of = |chain: &str| -> Vec<&str> {
            let prefix = format!("add rule inet ignition_t1 {chain} ");
            s.lines().filter(|l| l.starts_with(&prefix)).collect()
        };
        let (general, explicit) = (rules_of("vm-7"), rules_of("vmx-7"));
        assert!(general
            .iter()
            .any(|l| l.ends_with("ip saddr != 10.200.0.30 drop")));
        assert!(general
            .iter()
            .any(|l| l.ends_with("ip daddr 198.18.0.2/32 tcp dport 8080 accept")));
        assert!(general.iter().any(
            |l| l.ends_with("ip daddr 0.0.0.0/0 meta l4proto { tcp, udp } th dport 443 accept")
        ));
        assert!(explicit.iter().any(|l| l.ends_with("udp dport 53 accept")));
        assert!(
            explicit
                .iter()
                .any(|l| l.ends_with("ip daddr != @t_acme drop")),
            "another VM only within the tenant: {s}"
        );
        assert!(s.contains("add element inet ignition_t1 t_acme { 10.200.0.30 }"));
        assert!(
            !explicit.iter().any(|l| l.contains("0.0.0.0/0")),
            "a broad rule never opens the host or other VMs: {s}"
        );
        assert_eq!(
            general.last().copied(),
            Some("add rule inet ignition_t1 vm-7 drop")
        );
        assert!(s.contains("add element inet ignition_t1 general { \"igt1-7\" : jump vm-7 }"));
        assert!(s.contains("add element inet ignition_t1 vm_ifs { \"igt1-7\" }"));
        assert!(s.contains("add element inet ignition_t1 vm_addrs { 10.200.0.30 }"));
        let r = rs().remove_vm(7, "igt1-7", "10.200.0.30".parse().unwrap(), "t_acme");
        assert!(r.contains("delete element inet ignition_t1 t_acme { 10.200.0.30 }"));
        assert!(r.contains("delete chain inet ignition_t1 vmx-7"));
        assert!(r.contains("delete element inet ignition_t1 vm_addrs { 10.200.0.30 }"));
    }
}
