//! Egress policy: the destinations a function's VM may open connections to.
//!
//! A rule is written `CIDR:PORT[-PORT][/tcp|/udp]`, e.g. `198.18.0.10/32:443/tcp` or
//! `10.0.0.0/8:5432`; a bare address is a /32; no protocol means both TCP and UDP. A function
//! without rules has no egress at all. Parsing is strict: host bits set under the prefix, port
//! 0, reversed ranges and unknown protocols are errors that say which part is wrong.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: an address and a prefix length, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Why a rule or network could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not `CIDR:PORT[-PORT][/tcp|/udp]`.
    #[error(
        "egress rule {0:?}: expected CIDR:PORT[-PORT][/tcp|/udp], e.g. 198.18.0.10/32:443/tcp"
    )]
    Shape(String),
    /// The address or prefix is not valid.
    #[error("egress rule {rule:?}: bad CIDR {cidr:?}: {why}")]
    Cidr {
        /// The whole rule.
        rule: String,
        /// The CIDR part.
        cidr: String,
        /// What is wrong with it.
        why: String,
    },
    /// A port is not a number in 1-65535, or the range is reversed.
    #[error("egress rule {rule:?}: bad port {port:?}: {why}")]
    Port {
        /// The whole rule.
        rule: String,
        /// The port part.
        port: String,
        /// What is wrong with it.
        why: String,
    },
    /// The protocol is not `tcp` or `udp`.
    #[error("egress rule {rule:?}: unknown protocol {proto:?} (tcp or udp)")]
    Protocol {
        /// The whole rule.
        rule: String,
        /// The protocol part.
        proto: String,
    },
}

impl Ipv4Net {
    /// `0.0.0.0/0`.
    pub const ZERO: Self = Self {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };

    /// The network `addr/prefix`; `None` when the prefix is over 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        let net = Self { addr, prefix };
        (prefix <= 32 && u32::from(addr) & !net.mask() == 0).then_some(net)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether every address of `other` is in this network.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// Whether the network is one address (a /32): a rule names that address explicitly.
    pub fn is_single(&self) -> bool {
        self.prefix == 32
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let p: u8 = p
                    .parse()
                    .map_err(|_| format!("prefix {p:?} is not a number in 0-32"))?;
                (a, p)
            }
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        if prefix > 32 {
            return Err(format!("prefix /{prefix} is over 32"));
        }
        Self::new(addr, prefix).ok_or_else(|| {
            let masked = Ipv4Addr::from(u32::from(addr) & Self { addr, prefix }.mask());
            format!("host bits are set (did you mean {masked}/{prefix}?)")
        })
    }
}

/// The transport protocols a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// TCP and UDP.
    Both,
}

/// One allowed destination: a network, a port range, and protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EgressRule {
    /// Destination network.
    pub net: Ipv4Net,
    /// First port of the range.
    pub first_port: u16,
    /// Last port of the range (equal to `first_port` for one port).
    pub last_port: u16,
    /// Protocols.
    pub protocol: Protocol,
}

impl EgressRule {
    /// Whether the rule allows `ip`, `port` over `tcp` (or UDP).
    pub fn allows(&self, ip: Ipv4Addr, port: u16, tcp: bool) -> bool {
        let proto = match self.protocol {
            Protocol::Both => true,
            Protocol::Tcp => tcp,
            Protocol::Udp => !tcp,
        };
        proto && self.net.contains(ip) && (self.first_port..=self.last_port).contains(&port)
    }
}

fn parse_port(rule: &str, s: &str) -> Result<u16, PolicyError> {
    let bad = |why: &str| PolicyError::Port {
        rule: rule.to_owned(),
        port: s.to_owned(),
        why: why.to_owned(),
    };
    let n: u32 = s.parse().map_err(|_| bad("not a number"))?;
    match u16::try_from(n) {
        Ok(0) | Err(_) => Err(bad("ports are 1-65535")),
        Ok(p) => Ok(p),
    }
}

impl FromStr for EgressRule {
    type Err = PolicyError;
    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let (cidr, rest) = rule
            .rsplit_once(':')
            .ok_or_else(|| PolicyError::Shape(rule.to_owned()))?;
        if cidr.is_empty() || rest.is_empty() {
            return Err(PolicyError::Shape(rule.to_owned()));
        }
        let net: Ipv4Net = cidr.parse().map_err(|why| PolicyError::Cidr {
            rule: rule.to_owned(),
            cidr: cidr.to_owned(),
            why,
        })?;
        let (ports, protocol) = match rest.split_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => {
                return Err(PolicyError::Protocol {
                    rule: rule.to_owned(),
                    proto: other.to_owned(),
                })
            }
            None => (rest, Protocol::Both),
        };
        let (first_port, last_port) = match ports.split_once('-') {
            Some((a, b)) => (parse_port(rule, a)?, parse_port(rule, b)?),
            None => {
                let p = parse_port(rule, ports)?;
                (p, p)
            }
        };
        if first_port > last_port {
            return Err(PolicyError::Port {
                rule: rule.to_owned(),
                port: ports.to_owned(),
                why: "the range is reversed".to_owned(),
            });
        }
        Ok(Self {
            net,
            first_port,
            last_port,
            protocol,
        })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.net, self.first_port)?;
        if self.last_port != self.first_port {
            write!(f, "-{}", self.last_port)?;
        }
        match self.protocol {
            Protocol::Tcp => f.write_str("/tcp"),
            Protocol::Udp => f.write_str("/udp"),
            Protocol::Both => Ok(()),
        }
    }
}

impl serde::Serialize for EgressRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EgressRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a list of rules, failing on the first bad one.
pub fn parse_rules<S: AsRef<str>>(rules: &[S]) -> Result<Vec<EgressRule>, PolicyError> {
    rules.iter().map(|r| r.as_ref().trim().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        let r: EgressRule = "198.18.0.10/32:443/tcp".parse().unwrap();
        assert_eq!(r.net.to_string(), "198.18.0.10/32");
        assert_eq!(
            (r.first_port, r.last_port, r.protocol),
            (443, 443, Protocol::Tcp)
        );
        let r: EgressRule = "10.0.0.0/8:5000-5010".parse().unwrap();
        assert_eq!(
            (r.first_port, r.last_port, r.protocol),
            (5000, 5010, Protocol::Both)
        );
        let r: EgressRule = "1.1.1.1:53/udp".parse().unwrap();
        assert!(r.net.is_single());
        assert!(r.allows("1.1.1.1".parse().unwrap(), 53, false));
        assert!(!r.allows("1.1.1.1".parse().unwrap(), 53, true));
        assert!(!r.allows("1.1.1.2".parse().unwrap(), 53, false));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let err = |s: &str| s.parse::<EgressRule>().unwrap_err().to_string();
        assert!(err("10.0.0.1/8:80").contains("host bits are set (did you mean 10.0.0.0/8?)"));
        assert!(err("10.0.0.0/33:80").contains("over 32"));
        assert!(err("300.0.0.0/8:80").contains("not an IPv4 address"));
        assert!(err("10.0.0.0/8:0").contains("ports are 1-65535"));
        assert!(err("10.0.0.0/8:70000").contains("ports are 1-65535"));
        assert!(err("10.0.0.0/8:http").contains("not a number"));
        assert!(err("10.0.0.0/8:90-80").contains("reversed"));
        assert!(err("10.0.0.0/8:80/icmp").contains("unknown protocol \"icmp\""));
        assert!(err("10.0.0.0/8").contains("expected CIDR:PORT"));
        assert!(err(":80").contains("expected CIDR:PORT"));
        assert!(err("::1/128:80").contains("bad CIDR"));
    }

    proptest! {
        #[test]
        fn display_round_trips(ip: u32, prefix in 0u8..=32, a in 1u16.., b in 1u16.., proto in 0u8..3) {
            let net = Ipv4Net::new(
                Ipv4Addr::from(ip & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)),
                prefix,
            ).unwrap();
            let rule = EgressRule {
                net,
                first_port: a.min(b),
                last_port: a.max(b),
                protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Both][usize::from(proto)],
            };
            let text = rule.to_string();
            prop_assert_eq!(text.parse::<EgressRule>(), Ok(rule));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<EgressRule>();
        }
    }
}
