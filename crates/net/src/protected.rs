//! The destinations no function reaches, whatever its policy: the operator's `--egress-deny`
//! ranges (by default loopback, private, shared, link-local, multicast and reserved space) and,
//! always, the node itself (every address of its interfaces), its cluster peers and its listen
//! addresses. A function's rule that could only ever reach such a destination is refused when
//! it is deployed; a wider one is accepted and the protected destinations are carved out of it
//! by the node's rules (see `nft`).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::policy::{EgressRule, Ipv4Net};

/// `--egress-deny`'s default: what a serverless function has no business reaching.
pub const DEFAULT_EGRESS_DENY: &[&str] = &[
    "127.0.0.0/8",
    "0.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// One denied range. IPv4 ranges are enforced by the node's rules; guests have no IPv6 at all
/// (every IPv6 packet from a VM is dropped), so IPv6 ranges hold by that and are kept so that
/// the operator's list reads as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedNet {
    /// An IPv4 network.
    V4(Ipv4Net),
    /// An IPv6 network: address and prefix length.
    V6(Ipv6Addr, u8),
}

impl FromStr for DeniedNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(net) = s.parse::<Ipv4Net>() {
            return Ok(Self::V4(net));
        }
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (ADDRESS/PREFIX)"))?;
        if let Ok(v4) = addr.parse::<Ipv4Addr>() {
            // Parsed as IPv4 above and refused: say why.
            return Err(s
                .parse::<Ipv4Net>()
                .err()
                .unwrap_or_else(|| format!("{v4}/{prefix} is not a network")));
        }
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is neither an IPv4 nor an IPv6 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 128)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 128"))?;
        Ok(Self::V6(addr, prefix))
    }
}

impl fmt::Display for DeniedNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(n) => n.fmt(f),
            Self::V6(a, p) => write!(f, "{a}/{p}"),
        }
    }
}

/// What the node denies and why a deploy is refused.
#[derive(Debug, Clone)]
pub struct EgressDeny {
    denied: Vec<DeniedNet>,
    /// Addresses always denied besides the node's interfaces': peers and listen addresses.
    always: Vec<Ipv4Addr>,
    /// The VM subnet: its VMs' addresses may be named by a rule (within one tenant).
    vm_subnet: Option<Ipv4Net>,
    /// Host links of this node's VMs start with this; their addresses are not followed one by
    /// one (the VM subnet covers them).
    vm_link_prefix: Option<String>,
}

impl Default for EgressDeny {
    fn default() -> Self {
        Self::new(
            DEFAULT_EGRESS_DENY
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        )
    }
}

impl EgressDeny {
    /// Denies `denied` (replacing the default list) and the node itself.
    pub fn new(denied: Vec<DeniedNet>) -> Self {
        Self {
            denied,
            always: Vec::new(),
            vm_subnet: None,
            vm_link_prefix: None,
        }
    }

    /// Also denies these addresses (cluster peers, listen addresses), whatever the list says.
    pub fn with_always(mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.always
            .extend(addrs.into_iter().filter(|a| !a.is_unspecified()));
        self.always.sort();
        self.always.dedup();
        self
    }

    /// The node's VM subnet and its VM links' name prefix (built-in networking).
    pub fn with_vm_subnet(mut self, subnet: Ipv4Net, link_prefix: &str) -> Self {
        self.vm_subnet = Some(subnet);
        self.vm_link_prefix = Some(link_prefix.to_owned());
        self
    }

    /// The denied IPv4 ranges, the VM subnet among them (its VMs are reached only by a rule
    /// naming one, checked before these).
    pub fn v4(&self) -> Vec<Ipv4Net> {
        self.denied
            .iter()
            .filter_map(|d| match d {
                DeniedNet::V4(n) => Some(*n),
                DeniedNet::V6(..) => None,
            })
            .chain(self.vm_subnet)
            .collect()
    }

    /// The node's own addresses now, and the peers' and listen addresses: always denied.
    pub fn node_addresses(&self) -> Vec<Ipv4Addr> {
        let mut addrs = interface_addresses(self.vm_link_prefix.as_deref());
        addrs.extend(self.always.iter().copied());
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Why `rule` is refused at deploy: it lies wholly inside a denied range (a rule naming
    /// VMs of the node's VM subnet excepted), or names only the node itself. `None`: accepted
    /// (what of it is denied is carved out on the host).
    pub fn refusal(&self, rule: &EgressRule) -> Option<String> {
        if self.vm_subnet.is_some_and(|s| s.covers(&rule.net)) {
            return None;
        }
        if let Some(range) = self.denied.iter().find_map(|d| match d {
            DeniedNet::V4(n) if n.covers(&rule.net) => Some(n),
            _ => None,
        }) {
            return Some(format!(
                "rule {rule} lies wholly inside {range}, a range no function reaches on this node \
                 (the operator's --egress-deny)"
            ));
        }
        if rule.net.is_single() && self.node_addresses().contains(&rule.net.addr()) {
            return Some(format!(
                "rule {rule} names {}, an address of this node, which no function reaches",
                rule.net.addr()
            ));
        }
        None
    }
}

/// Every IPv4 address of this host's interfaces, but those of links named `skip_prefix*`.
fn interface_addresses(skip_prefix: Option<&str>) -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| skip_prefix.is_none_or(|p| !a.interface_name.starts_with(p)))
        .filter_map(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rule(s: &str) -> EgressRule {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_list_parses_and_refuses_rules_inside_it_naming_the_range() {
        let d = EgressDeny::default();
        assert_eq!(d.denied.len(), DEFAULT_EGRESS_DENY.len());
        let why = d.refusal(&rule("169.254.169.254/32:80/tcp")).unwrap();
        assert!(why.contains("169.254.0.0/16"), "{why}");
        assert!(d
            .refusal(&rule("10.1.0.0/16:5432"))
            .unwrap()
            .contains("10.0.0.0/8"));
        // Wider than any denied range: accepted, carved out on the host.
        assert_eq!(d.refusal(&rule("0.0.0.0/0:1-65535")), None);
        assert_eq!(d.refusal(&rule("198.18.0.10/32:443/tcp")), None);
    }

    #[test]
    fn the_nodes_own_addresses_are_refused_and_vm_addresses_are_not() {
        let d = EgressDeny::new(Vec::new()).with_always(["198.18.7.7".parse().unwrap()]);
        let why = d.refusal(&rule("198.18.7.7/32:22")).unwrap();
        assert!(why.contains("an address of this node"), "{why}");
        let d = EgressDeny::default().with_vm_subnet("10.200.0.0/16".parse().unwrap(), "igx-");
        assert_eq!(d.refusal(&rule("10.200.0.6/32:9000/tcp")), None);
        assert!(d.v4().contains(&"10.200.0.0/16".parse().unwrap()));
    }

    #[test]
    fn ipv6_ranges_parse_and_bad_ones_say_why() {
        assert_eq!(
            "fc00::/7".parse::<DeniedNet>().unwrap().to_string(),
            "fc00::/7"
        );
        assert!("fc00::/129".parse::<DeniedNet>().is_err());
        assert!("10.0.0.1/8"
            .parse::<DeniedNet>()
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!("nonsense".parse::<DeniedNet>().is_err());
    }
}
