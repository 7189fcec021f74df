//! VM networking end to end, with real microVMs, namespaces, taps and nftables rules: what a
//! function's VM can reach is exactly what its egress policy allows, and nothing is left
//! behind. Test hosts live in network namespaces this test creates, on addresses from the
//! benchmarking range 198.18.0.0/15; no real network is touched.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{host_links, json, repo_root, TestServer};
use serde_json::{json, Value};

static HOSTS: AtomicU32 = AtomicU32::new(0);

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host outside the node: a network namespace linked to the host by a veth pair, with TCP
/// listeners answering `HTTP/1.0 200`.
struct TestHost {
    ns: String,
    host_if: String,
    /// The node's address on the link.
    node_addr: Ipv4Addr,
    /// The test host's address.
    addr: Ipv4Addr,
}

fn serve_forever(listener: TcpListener) {
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = c.read(&mut [0; 128]);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello\n");
        }
    });
}

/// Runs `f` on a thread inside the network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

impl TestHost {
    fn create(ports: &[u16]) -> Self {
        let n = HOSTS.load(Ordering::Relaxed);
        let id = (std::process::id() % 1000) * 10 + n;
        let octet = u8::try_from(id % 250).unwrap();
        Self::create_at(
            Ipv4Addr::new(198, 19, octet, 2),
            Ipv4Addr::new(198, 19, octet, 1),
            ports,
        )
    }

    /// A test host at `addr`, the node at `node_addr` on their /24 link.
    fn create_at(addr: Ipv4Addr, node_addr: Ipv4Addr, ports: &[u16]) -> Self {
        let n = HOSTS.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 1000) * 10 + n;
        let (ns, host_if) = (format!("igtest-{id}"), format!("igth{id}"));
        // Leftovers of an earlier run with the same id, if any.
        for args in [["netns", "del", &ns], ["link", "del", &host_if]] {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        }
        ip(&format!("netns add {ns}"));
        ip(&format!(
            "link add {host_if} type veth peer name eth0 netns {ns}"
        ));
        ip(&format!("addr add {node_addr}/24 dev {host_if}"));
        ip(&format!("link set {host_if} up"));
        ip(&format!("-n {ns} addr add {addr}/24 dev eth0"));
        ip(&format!("-n {ns} link set eth0 up"));
        ip(&format!("-n {ns} link set lo up"));
        // A route back to VMs, so that an inbound attempt from here is a real one.
        ip(&format!("-n {ns} route add 10.0.0.0/8 via {node_addr}"));
        for &port in ports {
            let listener = in_netns(&ns, move || {
                TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).unwrap()
            });
            serve_forever(listener);
        }
        Self {
            ns,
            host_if,
            node_addr,
            addr,
        }
    }

    /// Whether a TCP connection from this host to `to` succeeds within 2 s.
    fn can_connect(&self, to: SocketAddr) -> bool {
        in_netns(&self.ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
        })
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn invoke_json(server: &TestServer, name: &str, payload: &Value) -> Value {
    let (status, headers, body) = json(server.invoke(name, &payload.to_string()));
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.get("x-amz-function-error").is_none(),
        "{name} failed: {body}"
    );
    body
}

fn fixture() -> std::path::PathBuf {
    repo_root().join("crates/cli/tests/fixtures/netprobe")
}

#[test]
fn a_vm_reaches_only_what_its_policy_allows() {
    let host = TestHost::create(&[8080, 8081]);
    // A service on the node itself, on every address.
    let node_service = TcpListener::bind("0.0.0.0:0").unwrap();
    let node_port = node_service.local_addr().unwrap().port();
    serve_forever(node_service);
    // A VM subnet of 32 VMs: small enough to name every VM address in one policy.
    let pid = std::process::id();
    let subnet = format!("10.{}.{}.0/25", 240 + pid % 8, (pid / 8) % 256);
    let dns = Ipv4Addr::new(198, 19, host.addr.octets()[2], 53);
    let server = TestServer::start(&["--vm-subnet", &subnet, "--dns", &dns.to_string()]);
    let api_port = server.url.rsplit(':').next().unwrap().to_owned();
    let a = host.addr;

    // Broad rules for the node's and the VMs' ports: a broad rule never opens those.
    server.deploy(
        "prober",
        "python3",
        "app.handler",
        &fixture(),
        &[
            "--timeout",
            "20",
            "--egress",
            &format!("{a}/32:8080/tcp"),
            "--egress",
            &format!("0.0.0.0/0:{node_port}/tcp"),
            "--egress",
            &format!("0.0.0.0/0:{api_port}/tcp"),
            "--egress",
            "0.0.0.0/0:9000/tcp",
            "--egress",
            &format!("{dns}/32:53/udp"),
        ],
    );
    let n = host.node_addr;
    let net: ignition_net::Ipv4Net = subnet.parse().unwrap();
    // The node's end of every VM link (the prober's among them), by the node's and the API's
    // ports.
    let host_ends: Vec<String> = (0..32u32)
        .map(|i| Ipv4Addr::from(u32::from(net.addr()) + 4 * i + 1))
        .flat_map(|h| [format!("{h}:{node_port}"), format!("{h}:{api_port}")])
        .collect();
    let mut targets = vec![
        format!("{a}:8080"),
        format!("{a}:8081"),
        format!("{n}:{node_port}"),
        format!("gw:{node_port}"),
        format!("gw:{api_port}"),
    ];
    targets.extend(host_ends.iter().cloned());
    let r = invoke_json(&server, "prober", &json!({ "targets": targets }));
    let results = &r["results"];
    assert_eq!(
        results[&targets[0]], "open",
        "the allowed host and port: {r}"
    );
    assert_eq!(
        results[&targets[1]], "timeout",
        "same host, other port: {r}"
    );
    assert_eq!(
        results[&targets[2]], "timeout",
        "the node's address on the host link: {r}"
    );
    // The guest's gateway is its own namespace's end of the tap: nothing listens there.
    for gw in &targets[3..5] {
        assert!(
            !results[gw].as_str().unwrap().starts_with("open"),
            "the VM's gateway serves nothing: {r}"
        );
    }
    for end in &host_ends {
        assert_eq!(
            results[end], "timeout",
            "the node's address on a VM link, {end}: {r}"
        );
    }
    assert_eq!(
        r["gateway"], "169.254.0.1",
        "every guest has the same gateway: {r}"
    );
    assert_eq!(
        r["resolv"],
        format!("nameserver {dns}\n"),
        "a resolver the policy reaches is configured: {r}"
    );

    // Another VM: a listener, found by a prober whose policy names every VM address.
    let guests: Vec<Ipv4Addr> = (0..32u32)
        .map(|i| Ipv4Addr::from(u32::from(net.addr()) + 4 * i + 2))
        .collect();
    let mut explicit: Vec<String> = Vec::new();
    for g in &guests {
        explicit.push("--egress".into());
        explicit.push(format!("{g}/32:9000/tcp"));
    }
    explicit.extend(["--timeout".to_owned(), "20".to_owned()]);
    let explicit: Vec<&str> = explicit.iter().map(String::as_str).collect();
    server.deploy(
        "prober-named",
        "python3",
        "app.handler",
        &fixture(),
        &explicit,
    );
    server.deploy(
        "listener",
        "python3",
        "app.listen",
        &fixture(),
        &["--timeout", "120"],
    );
    let listening = {
        let url = server.url.clone();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap();
            let resp = http
                .post(format!("{url}/2015-03-31/functions/listener/invocations"))
                .body(json!({ "port": 9000, "seconds": 45 }).to_string())
                .send()
                .unwrap();
            resp.json::<Value>().unwrap()
        })
    };
    let scan: Vec<String> = guests.iter().map(|g| format!("{g}:9000")).collect();
    let mut named_hits = 0;
    let mut listener_addr = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while listener_addr.is_none() && std::time::Instant::now() < deadline {
        let r = invoke_json(
            &server,
            "prober-named",
            &json!({ "targets": scan, "timeout": 2 }),
        );
        for (t, v) in r["results"].as_object().unwrap() {
            if v == "open" {
                named_hits += 1;
                listener_addr = Some(t.clone());
            }
        }
    }
    let listener_addr = listener_addr.expect("a policy naming the VM's address reaches it");
    let r = invoke_json(
        &server,
        "prober",
        &json!({ "targets": [listener_addr], "timeout": 2 }),
    );
    assert_eq!(
        r["results"][&listener_addr], "timeout",
        "a broad rule does not reach another VM: {r}"
    );
    assert!(
        !host.can_connect(listener_addr.parse().unwrap()),
        "no inbound connection reaches a VM"
    );
    let done = listening.join().unwrap();
    assert_eq!(
        done["accepted"], named_hits,
        "the listener saw the named prober's connections and nobody else's: {done}"
    );
    server.stop_and_check_clean();
}

#[test]
fn vm_networks_are_removed_with_their_vms() {
    let server = TestServer::start(&["--keep-alive", "2", "--dns", "198.18.0.53"]);
    let (_, prefix) = server.network.clone().expect("networking is on by default");
    server.deploy(
        "probe",
        "python3",
        "app.handler",
        &fixture(),
        &["--egress", "198.18.0.53/32:53/udp"],
    );
    for i in 0..12 {
        let mode = ["restore", "pool", "auto"][i % 3];
        let (status, headers, body) =
            json(server.invoke_with("probe", &[("x-ignition-start", mode)], "{}"));
        assert_eq!(status, 200, "{body}");
        assert!(headers.get("x-amz-function-error").is_none(), "{body}");
        // Restored and warm VMs start with the network their snapshot carries: the shared
        // guest address and the function's resolvers, nothing applied on the way.
        assert_eq!(body["gateway"], "169.254.0.1", "{body}");
        assert_eq!(body["resolv"], "nameserver 198.18.0.53\n", "{body}");
        if mode != "auto" {
            assert_eq!(headers["x-ignition-start"], mode);
            let timing = headers["server-timing"].to_str().unwrap();
            let attach: f64 = timing
                .split(", ")
                .find_map(|p| p.strip_prefix("net_attach;dur="))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                attach, 0.0,
                "{mode}: the guest configured nothing: {timing}"
            );
        }
    }
    // Warm slots keep their networks until the keep-alive passes; then nothing is left.
    common::wait_for("idle VMs to go", Duration::from_secs(60), || {
        server.get_json("/v1/stats")["network"]["active"] == 0
    });
    let stats = server.get_json("/v1/stats")["network"].clone();
    assert_eq!(stats["attached"], stats["released"], "{stats}");
    assert!(stats["attached"].as_u64().unwrap() >= 12, "{stats}");
    // What is left are the spare networks made ahead for the next VMs, no VM's; the server
    // removes them when it stops (checked by stop_and_check_clean).
    common::wait_for("the spares to be made", Duration::from_secs(30), || {
        server.get_json("/v1/stats")["network"]["spares"] == 2
    });
    assert_eq!(host_links(&prefix).len(), 2, "{:?}", host_links(&prefix));
    server.stop_and_check_clean();
}

#[test]
fn protected_destinations_hold_against_the_widest_policy() {
    let open = TestHost::create(&[8080]);
    let listed = TestHost::create(&[8080]);
    // A stand-in for a cloud's metadata service, at its address.
    let metadata = TestHost::create_at(
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(169, 254, 169, 1),
        &[80],
    );
    let node_service = TcpListener::bind("0.0.0.0:0").unwrap();
    let node_port = node_service.local_addr().unwrap().port();
    serve_forever(node_service);
    // Each destination answers the node itself: what stops a VM is the policy alone.
    for target in [
        SocketAddr::from((open.addr, 8080)),
        SocketAddr::from((listed.addr, 8080)),
        SocketAddr::from((metadata.addr, 80)),
    ] {
        assert!(
            TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok(),
            "{target} serves"
        );
    }
    let listed_net = {
        let o = listed.addr.octets();
        format!("{}.{}.{}.0/24", o[0], o[1], o[2])
    };
    let pid = std::process::id();
    let subnet = format!("10.{}.{}.0/25", 232 + pid % 8, (pid / 8) % 256);
    let deny = format!("169.254.0.0/16,{listed_net}");
    let server = TestServer::start(&["--vm-subnet", &subnet, "--egress-deny", &deny]);
    server.deploy(
        "wide",
        "python3",
        "app.handler",
        &fixture(),
        &["--timeout", "20", "--egress", "0.0.0.0/0:1-65535"],
    );
    let targets = [
        format!("{}:8080", open.addr),
        format!("{}:8080", listed.addr),
        format!("{}:80", metadata.addr),
        format!("{}:{node_port}", open.node_addr),
        format!("{}:{node_port}", metadata.node_addr),
    ];
    let r = invoke_json(
        &server,
        "wide",
        &json!({ "targets": targets, "timeout": 2 }),
    );
    let results = &r["results"];
    assert_eq!(results[&targets[0]], "open", "an unprotected host: {r}");
    for t in &targets[1..] {
        assert_eq!(results[t], "timeout", "{t} is protected: {r}");
    }
    // Rules that could only reach a protected destination are refused at deploy.
    for (rule, why) in [
        (
            "169.254.169.254/32:80/tcp".to_owned(),
            "169.254.0.0/16".to_owned(),
        ),
        (format!("{}/32:8080/tcp", listed.addr), listed_net.clone()),
        (
            format!("{}/32:{node_port}/tcp", open.node_addr),
            "an address of this node".to_owned(),
        ),
    ] {
        let (status, _, body) = json(
            server
                .http()
                .put(format!("{}/v1/functions/narrow", server.url))
                .json(&json!({
                    "runtime": "python3",
                    "handler": "app.handler",
                    "egress": [rule],
                    "code": "",
                }))
                .send()
                .unwrap(),
        );
        assert_eq!(status, 400, "{rule}: {body}");
        assert_eq!(body["errorType"], "InvalidParameterValueException");
        let msg = body["errorMessage"].as_str().unwrap_or_default();
        assert!(msg.contains(&why), "{rule}: {body}");
    }
    server.stop_and_check_clean();
}

#[test]
fn bad_egress_rules_are_refused_with_the_reason() {
    let server = TestServer::start(&[]);
    let out = server.cli(&[
        "fn",
        "deploy",
        "bad",
        "--runtime",
        "python3",
        "--handler",
        "app.handler",
        "--code",
        fixture().to_str().unwrap(),
        "--egress",
        "10.0.0.1/8:80",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host bits are set (did you mean 10.0.0.0/8?)"),
        "{err}"
    );
    for (rule, why) in [
        ("10.0.0.0/8:0", "ports are 1-65535"),
        ("10.0.0.0/8:90-80", "reversed"),
        ("10.0.0.0/33:80", "over 32"),
        ("example.com:443", "not an IPv4 address"),
        ("10.0.0.0/8:80/icmp", "unknown protocol"),
    ] {
        let (status, _, body) = json(
            server
                .http()
                .put(format!("{}/v1/functions/bad", server.url))
                .json(&json!({
                    "runtime": "python3",
                    "handler": "app.handler",
                    "egress": [rule],
                    "code": "",
                }))
                .send()
                .unwrap(),
        );
        assert_eq!(status, 400, "{rule}: {body}");
        let msg = body["errorMessage"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with("egress: ") && msg.contains(why),
            "{rule}: {body}"
        );
    }
    server.stop_and_check_clean();
}

#[test]
fn cni_plugins_can_make_the_vm_network_and_the_policy_still_holds() {
    let host = TestHost::create(&[8080, 8081]);
    let pid = std::process::id();
    let name = format!("ignition-test-{pid}");
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("ptp.conflist");
    let subnet = format!("10.{}.{}.0/24", 248 + pid % 8, (pid / 8) % 256);
    std::fs::write(
        &conf,
        json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "ptp",
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            }]
        })
        .to_string(),
    )
    .unwrap();
    let server = TestServer::start(&["--network", "cni", "--cni-conf", conf.to_str().unwrap()]);
    let api_port = server.url.rsplit(':').next().unwrap().to_owned();
    let a = host.addr;
    server.deploy(
        "prober",
        "python3",
        "app.handler",
        &fixture(),
        &["--timeout", "20", "--egress", &format!("{a}/32:8080/tcp")],
    );
    let targets = [
        format!("{a}:8080"),
        format!("{a}:8081"),
        format!("gw:{api_port}"),
    ];
    for _ in 0..2 {
        let r = invoke_json(&server, "prober", &json!({ "targets": targets }));
        let net: ignition_net::Ipv4Net = subnet.parse().unwrap();
        let gw: Ipv4Addr = r["gateway"].as_str().unwrap().parse().unwrap();
        assert!(net.contains(gw), "the plugin's IPAM addressed the VM: {r}");
        assert_eq!(r["results"][&targets[0]], "open", "{r}");
        assert_eq!(r["results"][&targets[1]], "timeout", "{r}");
        assert_eq!(r["results"][&targets[2]], "timeout", "{r}");
    }
    server.stop_and_check_clean();
    // Every address the plugins handed out was given back with DEL.
    let ipam = std::path::Path::new("/var/lib/cni/networks").join(&name);
    let held: Vec<String> = std::fs::read_dir(&ipam)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(held.is_empty(), "IPAM leases left: {held:?}");
    let _ = std::fs::remove_dir_all(ipam);
}

#[test]
fn a_cni_configuration_that_would_bypass_the_firewall_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bridge.conflist");
    std::fs::write(
        &conf,
        json!({
            "cniVersion": "1.0.0",
            "name": "bridged",
            "plugins": [{ "type": "bridge", "ipam": { "type": "host-local" } }]
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new(common::BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--network",
            "cni",
            "--cni-conf",
        ])
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use a routed plugin such as ptp"), "{err}");
}
