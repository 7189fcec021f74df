//! Real namespaces, links and nftables rules (needs root, as the server does). The VM side is
//! checked by the end-to-end tests in crates/cli, with microVMs; these check the plumbing and
//! that nothing is left behind.

// Root and real network namespaces: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsRawFd;
use std::process::Command;

use ignition_net::{parse_rules, NetConfig, Network};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn host_links(prefix: &str) -> Vec<String> {
    sh("ip -o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_network_is_made_whole_and_removed_without_a_trace() {
    let net = Network::start(NetConfig {
        deny: ignition_net::EgressDeny::default(),
        subnet: "10.251.0.0/28".parse().unwrap(),
        cni: None,
        tag: "nt1".into(),
        dns: vec!["198.18.9.53".parse().unwrap()],
        tap_group: ignition_vmm_gid(),
        spares: 0,
    })
    .await
    .expect("VM networking needs root and nftables");
    let rules = parse_rules(&["198.18.9.53/32:53/udp", "198.18.9.0/24:8080/tcp"]).unwrap();
    let mut vms = Vec::new();
    for _ in 0..4 {
        vms.push(net.attach(&rules, "test").await.unwrap());
    }
    assert!(
        net.attach(&rules, "test")
            .await
            .unwrap_err()
            .to_string()
            .contains("no free VM address"),
        "a /28 holds four VMs"
    );
    let vm = &vms[0];
    assert_eq!(vm.address().to_string(), "10.251.0.2");
    let g = vm.guest();
    assert_eq!(
        g.address.to_string(),
        "169.254.0.2",
        "every guest shares one address"
    );
    assert_eq!(g.gateway.to_string(), "169.254.0.1");
    assert_eq!(g.prefix_len, 30);
    assert_eq!(
        g.dns,
        vec!["198.18.9.53".parse::<std::net::Ipv4Addr>().unwrap()]
    );

    let host = sh(&format!("ip -o addr show dev {}", vm.host_interface()));
    assert!(host.contains("inet 10.251.0.1/30"), "{host}");
    assert!(!host.contains("inet6"), "no IPv6 on the host end: {host}");
    // Inside the VM's namespace: the tap with the guest's gateway, the veth with the VM's
    // address and the default route to the host, and the translation between the two.
    let fd = vm.netns().as_raw_fd();
    let enter = format!("nsenter --net=/proc/{}/fd/{fd}", std::process::id());
    let inside = sh(&format!("{enter} ip -o addr show"));
    assert!(inside.contains("tap0    inet 169.254.0.1/30"), "{inside}");
    assert!(inside.contains("veth0    inet 10.251.0.2/30"), "{inside}");
    assert!(
        !inside.contains("inet6"),
        "no IPv6 in the VM's namespace: {inside}"
    );
    let routes = sh(&format!("{enter} ip route show default"));
    assert!(
        routes.contains("default via 10.251.0.1 dev veth0"),
        "{routes}"
    );
    let nat = sh(&format!("{enter} nft list ruleset"));
    assert!(
        nat.contains("ip saddr 169.254.0.2 snat to 10.251.0.2"),
        "{nat}"
    );
    assert!(
        nat.contains("ip daddr 10.251.0.2 dnat to 169.254.0.2"),
        "{nat}"
    );
    assert_eq!(
        sh(&format!("{enter} cat /proc/sys/net/ipv4/ip_forward")).trim(),
        "1"
    );
    let table = sh("nft list table inet ignition_nt1");
    assert!(table.contains("chain vm-0"), "{table}");
    assert!(
        table.contains("ip daddr 198.18.9.0/24 tcp dport 8080 accept"),
        "{table}"
    );
    assert!(table.contains("\"ignt1-0\" : jump vmx-0"), "{table}");
    assert_eq!(net.stats().active, 4);
    assert_eq!(host_links("ignt1-").len(), 4);

    for mut vm in vms {
        vm.release().await;
    }
    assert_eq!(net.stats().active, 0);
    assert!(
        host_links("ignt1-").is_empty(),
        "links left: {:?}",
        host_links("ignt1-")
    );
    let table = sh("nft list table inet ignition_nt1");
    assert!(!table.contains("chain vm-"), "VM chains left: {table}");
    assert!(!table.contains("jump"), "map entries left: {table}");
    net.shutdown().await;
    assert!(sh("nft list tables")
        .lines()
        .all(|l| !l.contains("ignition_nt1")));
}

#[tokio::test]
async fn bad_configuration_is_refused_with_a_reason() {
    let err = Network::start(NetConfig {
        deny: ignition_net::EgressDeny::default(),
        subnet: "10.251.1.0/31".parse().unwrap(),
        cni: None,
        tag: "nt2".into(),
        dns: vec![],
        tap_group: 0,
        spares: 0,
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("smaller than a /30"), "{err}");
    let err = Network::start(NetConfig {
        deny: ignition_net::EgressDeny::default(),
        subnet: "10.251.1.0/24".parse().unwrap(),
        cni: None,
        tag: "Bad-Tag".into(),
        dns: vec![],
        tap_group: 0,
        spares: 0,
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("[a-z0-9]"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_networks_are_made_ahead_used_once_and_removed() {
    let net = Network::start(NetConfig {
        deny: ignition_net::EgressDeny::default(),
        subnet: "10.251.2.0/27".parse().unwrap(),
        cni: None,
        tag: "nt3".into(),
        dns: vec![],
        tap_group: ignition_vmm_gid(),
        spares: 2,
    })
    .await
    .expect("VM networking needs root and nftables");
    let until_spares = |n: u32| {
        let net = &net;
        async move {
            for _ in 0..500 {
                if net.stats().spares == n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("{n} spares never came: {:?}", net.stats());
        }
    };
    until_spares(2).await;
    let made_ahead = host_links("ignt3-");
    assert_eq!(made_ahead.len(), 2, "{made_ahead:?}");
    assert_eq!(net.stats().active, 0, "spares are not VM networks");
    let rules = parse_rules(&["198.18.9.0/24:8080/tcp"]).unwrap();
    let mut vm = net.attach(&rules, "test").await.unwrap();
    assert!(
        made_ahead.contains(&vm.host_interface().to_owned()),
        "a VM takes a spare: {} not in {made_ahead:?}",
        vm.host_interface()
    );
    let table = sh("nft list table inet ignition_nt3");
    assert!(
        table.contains(&format!("\"{}\" : jump vmx-", vm.host_interface())),
        "the policy is installed when the spare is taken: {table}"
    );
    // It is replaced, by a new network: no spare is ever handed out twice.
    until_spares(2).await;
    let now = host_links("ignt3-");
    assert_eq!(now.len(), 3, "{now:?}");
    let mut second = net.attach(&rules, "test").await.unwrap();
    assert_ne!(second.host_interface(), vm.host_interface());
    assert_ne!(second.address(), vm.address());
    vm.release().await;
    second.release().await;
    until_spares(2).await;
    assert_eq!(net.stats().active, 0);
    assert_eq!(host_links("ignt3-").len(), 2, "only the spares are left");
    net.shutdown().await;
    assert!(
        host_links("ignt3-").is_empty(),
        "shutdown removes the spares: {:?}",
        host_links("ignt3-")
    );
    assert!(sh("nft list tables")
        .lines()
        .all(|l| !l.contains("ignition_nt3")));
}

/// The group jailed VMMs run in by default (what the server passes).
fn ignition_vmm_gid() -> u32 {
    2_000_000_000
}

/// #19: a VM network still held by a task when the runtime shuts down (a pool slot being
/// made while the node stops) is dropped without its release running. That drop recursed
/// until the stack overflowed and aborted the node; now what its release did not do is left to
/// the next start's sweep, which removes it.
#[test]
fn a_vm_network_dropped_by_a_runtime_shutting_down_is_left_to_the_sweep() {
    let config = || NetConfig {
        deny: ignition_net::EgressDeny::default(),
        subnet: "10.251.3.0/28".parse().unwrap(),
        cni: None,
        tag: "nt4".into(),
        dns: Vec::new(),
        tap_group: ignition_vmm_gid(),
        spares: 0,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let vm = rt.block_on(async {
        let net = Network::start(config()).await.unwrap();
        net.attach(&[], "test").await.unwrap()
    });
    assert_eq!(host_links("ignt4-").len(), 1);
    rt.spawn(async move {
        let _held = vm;
        std::future::pending::<()>().await
    });
    // Without the fix the process aborts here (stack overflow). Whether the release ran
    // before the runtime stopped is a race; what it did not do is left to the sweep.
    drop(rt);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let net = Network::start(config()).await.unwrap();
        assert!(host_links("ignt4-").is_empty(), "the next start sweeps it");
        net.shutdown().await;
    });
}
