//! Clusters of real `ignition server` processes on loopback sharing one PostgreSQL store (a
//! throwaway server per test), running real microVMs: skewed load spreads by stealing, results
//! come back to the node the caller asked, what one node writes every node serves, a node
//! killed mid-run loses nothing (its stolen work, its accepted events), and a node that joins
//! later takes work.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{code_dir, wait_for, TestServer};
use ignition_pg_test::PgServer;

/// Each test runs two or three servers and up to a dozen microVMs; side by side on a 2-core
/// machine they starve each other's guests (a 1-second handler once took over 30 s), so the
/// tests of this file run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleeps as long as the event says and echoes its index.
const SLEEPER: &str = "import time\n\ndef handler(event, context):\n    time.sleep(event.get('sleep', 1))\n    return {'i': event.get('i')}\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node with 2 slots on the store at `store`, at a fresh cluster address, joining through
/// `seed` if given, in development mode (no authentication).
fn node(store: &str, id: &str, seed: Option<u16>, extra: &[&str]) -> (TestServer, u16) {
    let mut args = vec!["--dev"];
    args.extend_from_slice(extra);
    node_secure(store, id, seed, &args)
}

/// As [`node`], authenticating every request.
fn node_secure(store: &str, id: &str, seed: Option<u16>, extra: &[&str]) -> (TestServer, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let seed = seed.map(|p| format!("127.0.0.1:{p}"));
    let mut args = vec![
        "--store",
        store,
        "--node-id",
        id,
        "--cluster-addr",
        &addr,
        "--slots",
        "2",
        "--max-vms",
        "2",
        // A short lease, so that a killed thief's invocations come back within the test.
        "--lease-ms",
        "4000",
    ];
    if let Some(s) = &seed {
        args.extend(["--peers", s.as_str()]);
    }
    args.extend_from_slice(extra);
    (TestServer::start_secure(&args), port)
}

/// Deploys [`SLEEPER`] as `sleeper` at `n`.
fn deploy_sleeper(n: &TestServer, timeout_s: u32) {
    let code = code_dir(&[("app.py", SLEEPER)]);
    let timeout = timeout_s.to_string();
    n.deploy(
        "sleeper",
        "python3",
        "app.handler",
        code.path(),
        &["--timeout", &timeout],
    );
}

fn cluster_stats(n: &TestServer) -> serde_json::Value {
    n.get_json("/v1/stats")["cluster"].clone()
}

fn wait_for_peers(nodes: &[&TestServer], peers: u64) {
    wait_for("the cluster to form", Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| cluster_stats(n)["peers"].as_u64() == Some(peers))
    });
}

fn wait_for_function(n: &TestServer, name: &str) {
    wait_for(
        &format!("{name} to reach {}", n.url),
        Duration::from_secs(60),
        || {
            n.http()
                .get(format!("{}/v1/functions/{name}", n.url))
                .send()
                .unwrap()
                .status()
                .is_success()
        },
    );
}

/// `n` concurrent invocations of `function` at the node at `base`, each sleeping `sleep`
/// seconds: for each, the executing node (`x-ignition-node`); asserts each answered 200 with
/// its own index.
fn burst(base: &str, function: &str, n: usize, sleep: f64) -> Vec<String> {
    let url = Arc::new(format!(
        "{base}/2015-03-31/functions/{function}/invocations"
    ));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let url = Arc::clone(&url);
            std::thread::spawn(move || {
                let r = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(300))
                    .build()
                    .unwrap()
                    .post(url.as_str())
                    .body(serde_json::json!({"i": i, "sleep": sleep}).to_string())
                    .send()
                    .unwrap();
                let status = r.status();
                let executor = r
                    .headers()
                    .get("x-ignition-node")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body: serde_json::Value = r.json().unwrap_or_default();
                assert_eq!(status, 200, "invocation {i} (node {executor:?}): {body}");
                assert_eq!(
                    body["i"], i,
                    "invocation {i} (node {executor:?}) got another's result: {body}"
                );
                executor.expect("x-ignition-node")
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn counts(executors: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in executors {
        *m.entry(e.clone()).or_default() += 1;
    }
    m
}

#[test]
fn skewed_load_spreads_and_every_result_returns_to_its_caller() {
    let _serial = one_at_a_time();
    let pg = PgServer::start().unwrap();
    let store = pg.url();
    let (n1, seed) = node(&store, "n1", None, &[]);
    let (n2, _) = node(&store, "n2", Some(seed), &[]);
    let (n3, _) = node(&store, "n3", Some(seed), &[]);
    wait_for_peers(&[&n1, &n2, &n3], 2);
    let status = n1.cli(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("peers (2): n2, n3"),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Deployed at one node, the function is every node's...
    deploy_sleeper(&n1, 120);
    wait_for_function(&n2, "sleeper");
    wait_for_function(&n3, "sleeper");
    // ...and any node accepts its invocations.
    let via_n3 = burst(&n3.url, "sleeper", 1, 0.0);
    assert_eq!(via_n3.len(), 1);

    // All the load at n1, 2 slots per node: 12 one-second invocations.
    let executors = burst(&n1.url, "sleeper", 12, 1.0);
    let by_node = counts(&executors);
    let elsewhere = executors.iter().filter(|e| *e != "n1").count();
    assert!(
        elsewhere >= 4,
        "the other nodes ran at least a third of the work: {by_node:?}"
    );
    let s1 = cluster_stats(&n1);
    assert!(s1["lent"].as_u64().unwrap() >= 4, "{s1}");
    assert_eq!(
        s1["returned"].as_u64().unwrap() + s1["reclaimed"].as_u64().unwrap(),
        s1["lent"].as_u64().unwrap(),
        "every lent invocation came back or was reclaimed: {s1}"
    );
    let thieves: u64 = [&n2, &n3]
        .iter()
        .map(|n| cluster_stats(n)["ran_stolen"].as_u64().unwrap())
        .sum();
    assert!(thieves >= 4, "thieves counted what they ran");

    // A version published and an alias made at one node serve at another.
    let published = n1
        .http()
        .post(format!("{}/2015-03-31/functions/sleeper/versions", n1.url))
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    assert!(published.status().is_success(), "{:?}", published.text());
    let alias = n1
        .http()
        .post(format!("{}/2015-03-31/functions/sleeper/aliases", n1.url))
        .json(&serde_json::json!({"Name": "live", "FunctionVersion": "1"}))
        .send()
        .unwrap();
    assert!(alias.status().is_success(), "{:?}", alias.text());
    wait_for("the alias to serve at n3", Duration::from_secs(60), || {
        let r = n3
            .http()
            .post(format!(
                "{}/2015-03-31/functions/sleeper/invocations?Qualifier=live",
                n3.url
            ))
            .body(r#"{"i": 7, "sleep": 0}"#)
            .send()
            .unwrap();
        r.status() == 200
            && r.headers()
                .get("X-Amz-Executed-Version")
                .is_some_and(|v| v == "1")
    });

    // A deletion anywhere reaches every node.
    let out = n2.cli(&["fn", "rm", "sleeper"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in [&n1, &n3] {
        wait_for(
            "the deletion at every node",
            Duration::from_secs(60),
            || {
                n.http()
                    .get(format!("{}/v1/functions/sleeper", n.url))
                    .send()
                    .unwrap()
                    .status()
                    == 404
            },
        );
    }
    for n in [n1, n2, n3] {
        n.stop_and_check_clean();
    }
}

#[test]
fn a_node_killed_mid_run_loses_nothing() {
    let _serial = one_at_a_time();
    let pg = PgServer::start().unwrap();
    let store = pg.url();
    let (n1, seed) = node(&store, "n1", None, &["--no-steal"]);
    let (n2, _) = node(&store, "n2", Some(seed), &[]);
    wait_for_peers(&[&n1, &n2], 1);
    deploy_sleeper(&n1, 60);
    wait_for_function(&n2, "sleeper");

    let n1_url = n1.url.clone();
    let load = std::thread::spawn(move || burst(&n1_url, "sleeper", 8, 4.0));
    // Kill the thief once it runs stolen invocations.
    wait_for("n2 to run stolen work", Duration::from_secs(120), || {
        cluster_stats(&n2)["stolen"].as_u64().unwrap() > 0
    });
    drop(n2);
    let executors = load.join().unwrap();
    assert_eq!(executors.len(), 8, "every invocation answered");
    let s1 = cluster_stats(&n1);
    assert!(
        s1["reclaimed"].as_u64().unwrap() >= 1,
        "the dead thief's leases expired and their invocations ran again: {s1}"
    );
    assert_eq!(s1["abandoned"].as_u64(), Some(0), "{s1}");
    assert_eq!(s1["lent_now"].as_u64(), Some(0), "{s1}");
    n1.stop_and_check_clean();
}

/// 20 asynchronous invocations accepted by n1, which is killed (SIGKILL) at once, before any
/// of its microVMs booted: n2 and n3, started after, run every one of them (the queued ones
/// at once, the ones n1 had claimed when its leases lapse), and none is lost or failed.
#[test]
fn events_accepted_by_a_node_killed_before_they_ran_run_at_the_others() {
    let _serial = one_at_a_time();
    let pg = PgServer::start().unwrap();
    let store = pg.url();
    let (n1, seed) = node(&store, "n1", None, &[]);
    deploy_sleeper(&n1, 60);
    let ids: Vec<String> = (0..20)
        .map(|i| {
            let r = n1
                .http()
                .post(format!(
                    "{}/2015-03-31/functions/sleeper/invocations",
                    n1.url
                ))
                .header("X-Amz-Invocation-Type", "Event")
                .body(serde_json::json!({"i": i, "sleep": 0}).to_string())
                .send()
                .unwrap();
            assert_eq!(r.status(), 202);
            r.headers()["x-amzn-requestid"].to_str().unwrap().to_owned()
        })
        .collect();
    drop(n1);
    let (n2, seed2) = node(&store, "n2", Some(seed), &[]);
    let (n3, _) = node(&store, "n3", Some(seed2), &[]);
    let ran = |n: &TestServer, id: &str| {
        n.get_json(&format!("/v1/functions/sleeper/logs?request_id={id}"))["logs"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    };
    wait_for(
        "every event to run at n2 or n3",
        Duration::from_secs(240),
        || ids.iter().all(|id| ran(&n2, id)),
    );
    let failed = n3.get_json("/v1/functions/sleeper/failed-events");
    assert_eq!(
        failed["events"].as_array().map(Vec::len),
        Some(0),
        "{failed}"
    );
    for n in [n2, n3] {
        n.stop_and_check_clean();
    }
}

#[test]
fn a_node_joining_later_starts_stealing() {
    let _serial = one_at_a_time();
    let pg = PgServer::start().unwrap();
    let store = pg.url();
    let (n1, seed) = node(&store, "n1", None, &["--no-steal"]);
    deploy_sleeper(&n1, 60);
    let before = counts(&burst(&n1.url, "sleeper", 2, 0.0));
    assert_eq!(before.keys().collect::<Vec<_>>(), ["n1"]);

    let (n2, _) = node(&store, "n2", Some(seed), &[]);
    wait_for_peers(&[&n1, &n2], 1);
    wait_for_function(&n2, "sleeper");
    let by_node = counts(&burst(&n1.url, "sleeper", 8, 2.0));
    assert!(
        by_node.get("n2").copied().unwrap_or(0) >= 2,
        "the newcomer took work: {by_node:?}"
    );
    for n in [n1, n2] {
        n.stop_and_check_clean();
    }
}

/// `ignition cluster certs` into `dir` for `nodes`; the flags a node needs.
fn certs(dir: &std::path::Path, nodes: &[&str]) {
    let mut args = vec!["cluster", "certs", "--dir", dir.to_str().unwrap()];
    for n in nodes {
        args.extend(["--node", n]);
    }
    let out = std::process::Command::new(common::BIN)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn tls_args(dir: &std::path::Path, node: &str) -> Vec<String> {
    let f = |name: String| dir.join(name).to_str().unwrap().to_owned();
    vec![
        "--cluster-ca".into(),
        f("ca.pem".into()),
        "--cluster-cert".into(),
        f(format!("{node}.pem")),
        "--cluster-key".into(),
        f(format!("{node}-key.pem")),
    ]
}

#[test]
fn with_mutual_tls_only_members_get_work_or_functions() {
    let _serial = one_at_a_time();
    let pg = PgServer::start().unwrap();
    let store = pg.url();
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    certs(ours.path(), &["n1", "n2"]);
    certs(theirs.path(), &["n3"]);
    let a1 = tls_args(ours.path(), "n1");
    let a2 = tls_args(ours.path(), "n2");
    let a3 = tls_args(theirs.path(), "n3");
    let (n1, seed) = node(&store, "n1", None, &refs(&a1));
    let (n2, _) = node(&store, "n2", Some(seed), &refs(&a2));
    // An outsider with a certificate from another CA (and a store of its own) gossips its way
    // in, but no member accepts its calls, and it accepts none of theirs.
    let theirs_store = pg.fresh_database().unwrap();
    let (n3, _) = node(&theirs_store, "n3", Some(seed), &refs(&a3));
    wait_for_peers(&[&n1, &n2, &n3], 2);

    deploy_sleeper(&n1, 120);
    wait_for_function(&n2, "sleeper");
    let by_node = counts(&burst(&n1.url, "sleeper", 8, 1.0));
    assert!(by_node.get("n2").copied().unwrap_or(0) >= 1, "{by_node:?}");
    assert!(
        !by_node.contains_key("n3"),
        "the outsider ran nothing: {by_node:?}"
    );
    let s3 = cluster_stats(&n3);
    assert_eq!(
        (s3["ran_stolen"].as_u64(), s3["offers_accepted"].as_u64()),
        (Some(0), Some(0)),
        "{s3}"
    );
    let status = n3
        .http()
        .get(format!("{}/v1/functions/sleeper", n3.url))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 404, "the outsider's store is not the cluster's");
    for n in [n1, n2, n3] {
        n.stop_and_check_clean();
    }
}

#[test]
fn keys_made_at_one_node_authenticate_at_every_node_until_removed() {
    let _serial = one_at_a_time();
    let pg = PgServer::start().unwrap();
    let store = pg.url();
    let (n1, seed) = node_secure(&store, "n1", None, &[]);
    let (n2, _) = node_secure(&store, "n2", Some(seed), &[]);
    wait_for_peers(&[&n1, &n2], 1);
    let (id, secret) = n1.create_key("acme");
    let token = format!("{id}:{secret}");
    let code = common::repo_root().join("examples/hello-python");
    let out = n1.cli_as(
        &token,
        &[
            "fn",
            "deploy",
            "hello",
            "--runtime",
            "python3",
            "--handler",
            "app.handler",
            "--code",
            code.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key and acme's function reach n2, which then serves acme.
    wait_for(
        "acme's key and function at n2",
        Duration::from_secs(60),
        || {
            n2.cli_as(&token, &["fn", "ls"]).status.success()
                && String::from_utf8_lossy(&n2.cli_as(&token, &["fn", "ls"]).stdout)
                    .contains("hello")
        },
    );
    let out = n2.cli_as(
        &token,
        &["fn", "invoke", "hello", "--data", r#"{"name": "acme"}"#],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme"));
    // Removed at n1, the key stops working at n2 too.
    let rm = std::process::Command::new(common::BIN)
        .args(["key", "rm", &id, "--store", &store])
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    wait_for("the key's removal at n2", Duration::from_secs(60), || {
        !n2.cli_as(&token, &["fn", "ls"]).status.success()
    });
    for n in [n1, n2] {
        n.stop_and_check_clean();
    }
}
