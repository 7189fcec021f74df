//! The guest's network interface, configured from the host's [`NetworkConfig`] over rtnetlink.
//!
//! With Ignition's own networking every guest has the same address, given on the kernel command
//! line (`ignition.net=ADDRESS/PREFIX,GATEWAY`) and configured while the guest boots, so the
//! snapshots carry a configured interface; the function's snapshot also carries its
//! `/etc/resolv.conf`. The host still hands the configuration with each invocation: when it is
//! the one in force that costs nothing, and anything else (a CNI plugin's address) is applied
//! then: interface up, address, default route, resolvers. The host's firewall, not this code,
//! decides what the guest can reach: nothing here is trusted for isolation.

use std::net::Ipv4Addr;

use ignition_proto::NetworkConfig;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// At most this many resolvers are written (glibc reads three).
const MAX_RESOLVERS: usize = 3;

/// The interface configuration in force.
#[derive(Debug, Default)]
pub(crate) struct NetState {
    applied: Option<NetworkConfig>,
}

/// Parses the boot-time configuration `ADDRESS/PREFIX,GATEWAY`.
fn parse_boot_config(value: &str) -> Result<NetworkConfig, String> {
    let bad = || format!("ignition.net={value:?} is not ADDRESS/PREFIX,GATEWAY");
    let (net, gateway) = value.split_once(',').ok_or_else(bad)?;
    let (address, prefix) = net.split_once('/').ok_or_else(bad)?;
    let cfg = NetworkConfig {
        address: address.parse::<Ipv4Addr>().map_err(|_| bad())?.octets(),
        prefix_len: prefix.parse().map_err(|_| bad())?,
        gateway: gateway.parse::<Ipv4Addr>().map_err(|_| bad())?.octets(),
        dns: Vec::new(),
    };
    validate(&cfg)?;
    Ok(cfg)
}

/// The first interface that is not loopback, if the VM has one.
fn find_interface() -> Result<Option<u32>, String> {
    let entries =
        std::fs::read_dir("/sys/class/net").map_err(|e| format!("read /sys/class/net: {e}"))?;
    for e in entries.flatten() {
        if e.file_name() == "lo" {
            continue;
        }
        let index = std::fs::read_to_string(e.path().join("ifindex"))
            .map_err(|err| format!("read ifindex of {:?}: {err}", e.file_name()))?;
        return index
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("bad ifindex {index:?}"));
    }
    Ok(None)
}

/// The first interface that is not loopback: the VM has one.
fn interface_index() -> Result<u32, String> {
    find_interface()?
        .ok_or_else(|| "the VM has no network interface (is virtio_net loaded?)".to_owned())
}

fn set_up(rtnl: &mut Rtnl, index: u32) -> Result<(), String> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    rtnl.request(RouteNetlinkMessage::SetLink(link), 0)
        .map_err(|e| format!("bring the interface up: {e}"))
}

/// While the guest boots: brings the VM's interface up (opening a virtio-net device, its rings
/// and receive buffers, is costly, and done here it lands in the snapshot) and, given a
/// configuration (`ignition.net`), sets its address and route. Returns what is in force.
/// Without a configuration the interface has no address until an invocation brings one.
pub(crate) fn configure_at_boot(option: Option<&str>) -> Result<NetState, String> {
    let Some(index) = find_interface()? else {
        return Ok(NetState::default());
    };
    let Some(value) = option else {
        set_up(&mut Rtnl::open()?, index)?;
        return Ok(NetState::default());
    };
    let cfg = parse_boot_config(value)?;
    configure(&cfg, None)?;
    Ok(NetState { applied: Some(cfg) })
}

struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Self, String> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| format!("netlink socket: {e}"))?;
        socket
            .bind_auto()
            .map_err(|e| format!("netlink bind: {e}"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| format!("netlink connect: {e}"))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), String> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.header.length as usize];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| format!("netlink send: {e}"))?;
        let mut reply = Vec::with_capacity(8192);
        self.socket
            .recv(&mut reply, 0)
            .map_err(|e| format!("netlink recv: {e}"))?;
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
            .map_err(|e| format!("netlink reply: {e}"))?;
        match msg.payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(()),
                Some(code) => Err(std::io::Error::from_raw_os_error(-code.get()).to_string()),
            },
            _ => Ok(()),
        }
    }
}

fn validate(cfg: &NetworkConfig) -> Result<(), String> {
    if !(1..=30).contains(&cfg.prefix_len) {
        return Err(format!("prefix length {} is out of range", cfg.prefix_len));
    }
    let mask = u32::MAX << (32 - u32::from(cfg.prefix_len));
    let (addr, gw) = (
        u32::from_be_bytes(cfg.address),
        u32::from_be_bytes(cfg.gateway),
    );
    if addr & mask != gw & mask || addr == gw {
        return Err("the gateway is not on the guest's network".to_owned());
    }
    Ok(())
}

fn configure(cfg: &NetworkConfig, old: Option<&NetworkConfig>) -> Result<(), String> {
    validate(cfg)?;
    let index = interface_index()?;
    let mut rtnl = Rtnl::open()?;
    set_up(&mut rtnl, index)?;
    let address_message = |c: &NetworkConfig| {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = c.prefix_len;
        m.header.index = index;
        let a = Ipv4Addr::from(c.address);
        m.attributes.push(AddressAttribute::Local(a.into()));
        m.attributes.push(AddressAttribute::Address(a.into()));
        m
    };
    if let Some(old) = old.filter(|o| o.address != cfg.address) {
        let _ = rtnl.request(RouteNetlinkMessage::DelAddress(address_message(old)), 0);
    }
    rtnl.request(
        RouteNetlinkMessage::NewAddress(address_message(cfg)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map_err(|e| format!("set the address: {e}"))?;
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Universe;
    route.header.kind = RouteType::Unicast;
    route
        .attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::from(
            cfg.gateway,
        ))));
    route.attributes.push(RouteAttribute::Oif(index));
    rtnl.request(
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map_err(|e| format!("set the default route: {e}"))?;
    write_resolvers(cfg)
}

fn write_resolvers(cfg: &NetworkConfig) -> Result<(), String> {
    let resolv: String = cfg
        .dns
        .iter()
        .take(MAX_RESOLVERS)
        .map(|d| format!("nameserver {}\n", Ipv4Addr::from(*d)))
        .collect();
    crate::image_root::write_resolv_conf(&resolv);
    std::fs::write("/etc/resolv.conf", resolv).map_err(|e| format!("write resolv.conf: {e}"))
}

impl NetState {
    /// Applies `cfg` unless it is already in force; returns the microseconds it took.
    pub(crate) fn apply(&mut self, cfg: &NetworkConfig) -> Result<u64, String> {
        if self.applied.as_ref() == Some(cfg) {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let same_interface = self.applied.as_ref().is_some_and(|a| {
            (a.address, a.prefix_len, a.gateway) == (cfg.address, cfg.prefix_len, cfg.gateway)
        });
        if same_interface {
            validate(cfg)?;
            write_resolvers(cfg)?;
        } else {
            configure(cfg, self.applied.as_ref())?;
        }
        self.applied = Some(cfg.clone());
        Ok(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(address: [u8; 4], prefix_len: u8, gateway: [u8; 4]) -> NetworkConfig {
        NetworkConfig {
            address,
            prefix_len,
            gateway,
            dns: vec![],
        }
    }

    #[test]
    fn the_boot_configuration_is_parsed_strictly() {
        let c = parse_boot_config("169.254.0.2/30,169.254.0.1").unwrap();
        assert_eq!(c, cfg([169, 254, 0, 2], 30, [169, 254, 0, 1]));
        for bad in [
            "",
            "169.254.0.2/30",
            "169.254.0.2,169.254.0.1",
            "169.254.0.2/x,169.254.0.1",
            "169.254.0.2/30,gw",
            "169.254.0.2/30,169.254.0.9",
            "1.2.3.4.5/30,1.2.3.4",
        ] {
            assert!(parse_boot_config(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_gateway_must_be_on_the_guests_network() {
        assert!(validate(&cfg([10, 200, 0, 2], 30, [10, 200, 0, 1])).is_ok());
        assert!(validate(&cfg([10, 200, 0, 2], 30, [10, 200, 0, 5])).is_err());
        assert!(validate(&cfg([10, 200, 0, 2], 30, [10, 200, 0, 2])).is_err());
        assert!(validate(&cfg([10, 200, 0, 2], 0, [10, 200, 0, 1])).is_err());
        assert!(validate(&cfg([10, 200, 0, 2], 33, [10, 200, 0, 1])).is_err());
    }
}
