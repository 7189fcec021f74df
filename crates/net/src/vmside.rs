//! The VM's side of its network, set up from a thread inside the VM's namespace: the tap, and
//! either Ignition's routed veth pair with address translation or (CNI) tc redirects to the
//! plugin's interface.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::addresses::SlotAddrs;
use crate::{nft, tap, NetError, GUEST_SIDE, TAP_NAME};

pub(crate) fn link_err(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Link(format!("{what}: {e}"))
}

pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => Err(NetError::Link(format!("link {name} not found"))),
        Err(e) => Err(NetError::Link(format!("find link {name}: {e}"))),
    }
}

/// Runs `f` with a netlink handle in the calling thread's network namespace, on a runtime of
/// the thread's own (the thread is not one of the server's).
fn with_netlink<F, Fut>(f: F) -> Result<(), NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<(), NetError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetError::Namespace(format!("runtime for netlink: {e}")))?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Link(format!("netlink socket: {e}")))?;
        let conn = tokio::spawn(conn);
        let made = f(handle).await;
        conn.abort();
        made
    })
}

/// Inside a VM namespace made by CNI: the tap and the plugin's `eth0` joined by two tc
/// redirects (every frame in on one goes out the other), so the guest is the interface the
/// plugin configured.
pub(crate) fn join_tap_to_eth0() -> Result<(), NetError> {
    with_netlink(|handle| async move {
        let tap = link_index(&handle, TAP_NAME).await?;
        let eth0 = link_index(&handle, "eth0").await?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(tap).up().build())
            .execute()
            .await
            .map_err(link_err("set the tap up"))?;
        for (from, to) in [(tap, eth0), (eth0, tap)] {
            let dev = i32::try_from(from).map_err(|_| NetError::Link("index".into()))?;
            handle
                .qdisc()
                .add(dev)
                .ingress()
                .execute()
                .await
                .map_err(link_err("add an ingress qdisc"))?;
            handle
                .traffic_filter(dev)
                .add()
                .parent(0xffff_0000)
                // ETH_P_ALL, in network byte order as tc expects it.
                .protocol(0x0003u16.to_be())
                .redirect(to)
                .map_err(link_err("build the redirect"))?
                .execute()
                .await
                .map_err(link_err("add the redirect"))?;
        }
        Ok(())
    })
}

/// Writes a sysctl of the calling thread's network namespace (`/proc/sys/net` shows the
/// namespace of the thread that opens it).
fn sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(format!("/proc/sys/net/{path}"), value)
        .map_err(|e| NetError::Namespace(format!("set {path}: {e}")))
}

/// Gives link `index` the address `addr/prefix_len` and sets it up.
async fn address_and_up(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetError> {
    handle
        .address()
        .add(index, IpAddr::V4(addr), prefix_len)
        .execute()
        .await
        .map_err(link_err("add an address"))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(link_err("set a link up"))
}

/// Inside a new VM namespace: the tap (for VMMs of group `tap_group`) with the gateway of the
/// guest side ([`GUEST_SIDE`]), and a veth pair whose far end goes to the host's namespace; the
/// near end holds the VM's address `slot.guest` and translates it to and from the guest side's
/// address, so every guest can have the same address (the one in the snapshot) while the host
/// sees each VM at its own (the translation is connection tracking's, in the namespace: see
/// [`nft::vm_side_nat`]).
pub(crate) fn build_vm_side(
    host_if: &str,
    host_ns: RawFd,
    tap_group: u32,
    slot: SlotAddrs,
) -> Result<(), NetError> {
    tap::create_persistent(TAP_NAME, tap_group)?;
    // A router between the tap and the veth, for IPv4 only.
    sysctl("ipv4/ip_forward", "1")?;
    for scope in ["all", "default"] {
        sysctl(&format!("ipv6/conf/{scope}/disable_ipv6"), "1")?;
    }
    // `nft` runs in this thread's namespace: a child inherits it.
    nft::apply(&nft::vm_side_nat(slot.guest))?;
    let host_if = host_if.to_owned();
    with_netlink(move |handle| async move {
        let tap = link_index(&handle, TAP_NAME).await?;
        address_and_up(&handle, tap, GUEST_SIDE.gateway, GUEST_SIDE.prefix_len).await?;
        let links = handle.link();
        links
            .add(LinkVeth::new("veth0", &host_if).build())
            .execute()
            .await
            .map_err(link_err("add veth pair"))?;
        let veth = link_index(&handle, "veth0").await?;
        address_and_up(&handle, veth, slot.guest, 30).await?;
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(slot.host)
                    .output_interface(veth)
                    .build(),
            )
            .execute()
            .await
            .map_err(link_err("add the default route"))?;
        links
            .set(
                LinkUnspec::new_with_name(&host_if)
                    .setns_by_fd(host_ns)
                    .build(),
            )
            .execute()
            .await
            .map_err(link_err("move veth to the host"))
    })
}
