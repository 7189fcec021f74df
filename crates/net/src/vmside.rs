//! The VM's side of its network, set up from a thread inside the VM's namespace: the tap, and
//! either Ignition's bridge and veth pair or (CNI) tc redirects to the plugin's interface.

use std::future::Future;
use std::os::fd::RawFd;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

use crate::{tap, NetError, TAP_NAME};

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

/// Inside a new VM namespace: the tap (for VMMs of group `tap_group`), a bridge, and a veth
/// pair whose far end goes to the host's namespace.
pub(crate) fn build_vm_side(host_if: &str, host_ns: RawFd, tap_group: u32) -> Result<(), NetError> {
    tap::create_persistent(TAP_NAME, tap_group)?;
    with_netlink(|handle| async move {
        let links = handle.link();
        links
            .add(LinkBridge::new("br0").up().build())
            .execute()
            .await
            .map_err(link_err("add bridge"))?;
        let br = link_index(&handle, "br0").await?;
        links
            .add(LinkVeth::new("veth0", host_if).build())
            .execute()
            .await
            .map_err(link_err("add veth pair"))?;
        for port in [TAP_NAME, "veth0"] {
            links
                .set(LinkUnspec::new_with_name(port).controller(br).up().build())
                .execute()
                .await
                .map_err(link_err("attach to bridge"))?;
        }
        links
            .set(
                LinkUnspec::new_with_name(host_if)
                    .setns_by_fd(host_ns)
                    .build(),
            )
            .execute()
            .await
            .map_err(link_err("move veth to the host"))
    })
}
