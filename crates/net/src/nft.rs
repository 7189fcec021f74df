//! The egress policy as nftables rules, and their application with `nft -f -`.
//!
//! nftables rather than iptables: one table of Ignition's own (`inet ignition_<tag>`) holds
//! everything, so Ignition never edits rules it does not own; each change is one atomic
//! transaction; and per-VM policies hang off verdict maps keyed by the VM's host interface, so
//! the base chains do one lookup however many VMs run. The rules live in the host's namespace,
//! where nothing in a guest can reach them.
//!
//! What the base chains enforce, for packets arriving from a VM's link:
//! - forward: established flows pass; a new flow to a protected destination (the VM subnet,
//!   so other VMs; loopback, link-local and metadata addresses; multicast and reserved space)
//!   passes only by a rule naming a single address (a /32) that covers it; any other new flow
//!   passes by any of the VM's rules; everything else, IPv6 included, is dropped;
//! - input (the host itself and its services, the Ignition API included): only by a /32 rule;
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

/// Destinations reachable only by a rule naming the address: beside the VM subnet itself.
const PROTECTED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "100.100.100.200/32",
    "224.0.0.0/3",
];

/// Names of one node's rules.
#[derive(Debug, Clone)]
pub(crate) struct Ruleset {
    /// `ignition_<tag>`.
    pub(crate) table: String,
    /// The VM subnet the node assigns addresses from (built-in mode); with CNI the plugins'
    /// IPAM assigns them and each VM's address is protected one by one.
    pub(crate) subnet: Option<Ipv4Net>,
}

/// One VM's policy.
#[derive(Debug, Clone)]
pub(crate) struct VmPolicy<'a> {
    pub(crate) index: u32,
    pub(crate) host_if: &'a str,
    pub(crate) guest: Ipv4Addr,
    pub(crate) rules: &'a [EgressRule],
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
    pub(crate) fn base(&self) -> String {
        let t = &self.table;
        let protected = self
            .subnet
            .iter()
            .map(ToString::to_string)
            .chain(PROTECTED.iter().map(|s| (*s).to_owned()))
            .collect::<Vec<_>>()
            .join(", ");
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
  set protected {{ type ipv4_addr; flags interval; elements = {{ {protected} }} }}
  set vm_ifs {{ type ifname; }}
  set vm_addrs {{ type ipv4_addr; }}
  map general {{ type ifname : verdict; }}
  map explicit {{ type ifname : verdict; }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    iifname @vm_ifs ct state established,related accept
    oifname @vm_ifs ct state established,related accept{unassigned}
    iifname @vm_ifs ip daddr @protected iifname vmap @explicit
    iifname @vm_ifs ip daddr @vm_addrs iifname vmap @explicit
    iifname @vm_ifs iifname vmap @general
    iifname @vm_ifs drop
    oifname @vm_ifs drop
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname @vm_ifs ct state established,related accept
    iifname @vm_ifs iifname vmap @explicit
    iifname @vm_ifs drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;{nat}
  }}
}}
"
        )
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
        let mut s = String::new();
        for (chain, explicit_only) in [
            (format!("vm-{}", vm.index), false),
            (format!("vmx-{}", vm.index), true),
        ] {
            let _ = writeln!(s, "add chain inet {t} {chain}");
            let _ = writeln!(s, "flush chain inet {t} {chain}");
            let _ = writeln!(s, "add rule inet {t} {chain} ip saddr != {} drop", vm.guest);
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
    pub(crate) fn remove_vm(&self, index: u32, host_if: &str, guest: Ipv4Addr) -> String {
        let t = &self.table;
        format!(
            "delete element inet {t} vm_ifs {{ \"{host_if}\" }}
delete element inet {t} vm_addrs {{ {guest} }}
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
        }
    }

    #[test]
    fn base_table_guards_host_vms_and_inbound() {
        let b = rs().base();
        assert!(b.contains("elements = { 10.200.0.0/16, 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16"));
        assert!(b.contains("iifname @vm_ifs ip daddr @protected iifname vmap @explicit"));
        assert!(b.contains("iifname @vm_ifs ip daddr @vm_addrs iifname vmap @explicit"));
        assert!(b.contains("chain input {"));
        assert!(b.contains("oifname @vm_ifs drop"));
        assert!(b.contains("ip daddr 10.200.0.0/16 oifname != @vm_ifs drop"));
        assert!(b.contains("ip saddr 10.200.0.0/16 oifname != @vm_ifs masquerade"));
        let cni = Ruleset {
            subnet: None,
            ..rs()
        }
        .base();
        assert!(cni.contains("ip saddr @vm_addrs oifname != @vm_ifs masquerade"));
        assert!(!cni.contains("10.200.0.0/16"));
        assert!(cni.contains("elements = { 0.0.0.0/8,"));
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
        let r = rs().remove_vm(7, "igt1-7", "10.200.0.30".parse().unwrap());
        assert!(r.contains("delete chain inet ignition_t1 vmx-7"));
        assert!(r.contains("delete element inet ignition_t1 vm_addrs { 10.200.0.30 }"));
    }
}
