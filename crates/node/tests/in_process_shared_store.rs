//! Nodes sharing a PostgreSQL store (a throwaway server of the test's own), with the in-process
//! guest as their VMM: these tests are about the cluster, not about VMs. What a node writes,
//! every node serves from its next request on; numbers two nodes hand out at once differ; an
//! event accepted at one node runs wherever there is room; idle nodes steal queued work, and
//! what a stopped thief held runs again at its origin.
#![cfg(feature = "pg-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ignition_in_process_guest::InProcessGuest;
use ignition_pg_test::PgServer;
use serde_json::{json, Value};

mod in_process_support;

use in_process_support::*;

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `n` in-process nodes in one cluster on the store at `url`: `a`, `b`, `c`, ...
async fn cluster(guest: &InProcessGuest, url: &str, n: usize) -> Vec<TestNode> {
    let first = free_addr();
    let mut nodes = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), guest);
        c.store = Some(url.to_owned());
        c.cluster.node_id = Some(((b'a' + u8::try_from(i).unwrap()) as char).to_string());
        c.cluster.addr = Some(if i == 0 { first } else { free_addr() });
        if i > 0 {
            c.cluster.peers = vec![first.to_string()];
        }
        c.worker.pool_memory_mib = 0;
        let node = ignition_node::start(c).await.unwrap();
        nodes.push(TestNode {
            node,
            counters: guest.counters(),
            _dir: dir,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &nodes {
        loop {
            let s: Value = get_json(node.url("/v1/stats")).await;
            if s["cluster"]["peers"].as_u64() >= Some(n as u64 - 1) {
                break;
            }
            assert!(Instant::now() < deadline, "the nodes never met: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    nodes
}

/// Stops the nodes in order, the founder last.
async fn shutdown(nodes: Vec<TestNode>) {
    for n in nodes.into_iter().rev() {
        n.node.shutdown().await.unwrap();
    }
}

async fn publish(node: &TestNode, name: &str) -> (reqwest::StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(node.url(&format!("/2015-03-31/functions/{name}/versions")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_serves_a_deploy_at_every_node_at_once() {
    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let nodes = cluster(&guest, &pg.url(), 3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // Deployed at a, invoked at c on the very next request: no replication to wait for.
    assert_eq!(
        deploy(a, "shared", "vm.handler", json!({})).await.status(),
        201
    );
    let r = invoke(c, "shared", &json!({})).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["function"], "shared");

    // An update at b is what a serves next.
    let env = json!({ "env": { "GREETING": "from b" } });
    assert_eq!(deploy(b, "shared", "vm.handler", env).await.status(), 200);
    let body: Value = invoke(a, "shared", &json!({})).await.json().await.unwrap();
    assert_eq!(body["env"]["GREETING"], "from b");

    // Two nodes publishing at once get different numbers, every time.
    let mut numbers = Vec::new();
    for round in 0..5 {
        let env = json!({ "env": { "ROUND": round.to_string() } });
        assert_eq!(deploy(a, "shared", "vm.handler", env).await.status(), 200);
        let (ra, rb) = tokio::join!(publish(a, "shared"), publish(b, "shared"));
        for (status, v) in [ra, rb] {
            assert_eq!(status, 201, "{v}");
            numbers.push(v["Version"].as_str().unwrap().to_owned());
        }
    }
    let listed: Value = get_json(c.url("/2015-03-31/functions/shared/versions")).await;
    let listed: Vec<String> = listed["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Version"].as_str().unwrap().to_owned())
        .filter(|v| v != "$LATEST")
        .collect();
    let mut distinct = numbers.clone();
    distinct.sort_by_key(|v| v.parse::<u32>().unwrap());
    distinct.dedup();
    assert_eq!(distinct, listed, "published: {numbers:?}");
    // A same-content publish at either node answers the newest version, as Lambda does.
    assert!(distinct.len() >= 5, "{distinct:?}");

    // Deleted at c: gone at a on its next request.
    let r = reqwest::Client::new()
        .delete(c.url("/2015-03-31/functions/shared"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(invoke(a, "shared", &json!({})).await.status(), 404);

    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_runs_events_accepted_at_one_node() {
    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let nodes = cluster(&guest, &pg.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_eq!(
        deploy(a, "ev", "echo.handler", json!({})).await.status(),
        201
    );
    for i in 0..10 {
        let r = reqwest::Client::new()
            .post(b.url("/2015-03-31/functions/ev/invocations"))
            .header("X-Amz-Invocation-Type", "Event")
            .json(&json!({ "i": i }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Every event runs (on whichever node claimed it) and leaves the shared queue.
    // The store's client blocks: off the async threads.
    let url = pg.url();
    let store = std::sync::Arc::new(
        tokio::task::spawn_blocking(move || ignition_store::Store::connect(&url))
            .await
            .unwrap()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = std::sync::Arc::clone(&store);
        let s = tokio::task::spawn_blocking(move || st.event_counts())
            .await
            .unwrap()
            .unwrap();
        if s == (0, 0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "events left: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_down_answers_503_and_the_node_resumes_when_it_returns() {
    let mut pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let nodes = cluster(&guest, &pg.url(), 1).await;
    let a = &nodes[0];
    assert_eq!(
        deploy(a, "f", "echo.handler", json!({})).await.status(),
        201
    );

    pg.stop();
    let r = deploy(a, "g", "echo.handler", json!({})).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Type"], "Service", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("PostgreSQL"),
        "{body}"
    );
    let r = reqwest::Client::new()
        .post(a.url("/2015-03-31/functions/f/invocations"))
        .header("X-Amz-Invocation-Type", "Event")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "a new event is not accepted while it cannot be kept"
    );

    // Back: the same node, not restarted, writes again.
    pg.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = deploy(a, "g", "echo.handler", json!({})).await.status();
        if status == 201 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "the node never used the store again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(invoke(a, "g", &json!({"x": 1})).await.status(), 200);
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_down_keeps_cached_functions_answering_and_their_logs() {
    let mut pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let nodes = cluster(&guest, &pg.url(), 1).await;
    let a = &nodes[0];
    assert_eq!(
        deploy(a, "f", "echo.handler", json!({})).await.status(),
        201
    );
    assert_eq!(invoke(a, "f", &json!({"warm": true})).await.status(), 200);

    pg.stop();
    let mut ids = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let r = invoke(a, "f", &json!({"while": "down"})).await;
        assert_eq!(
            r.status(),
            200,
            "a cached function answers while the store is down"
        );
        ids.push(r.headers()["x-amzn-requestid"].to_str().unwrap().to_owned());
    }
    assert!(ids.len() >= 20, "{ids:?}");
    assert!(
        a.node.state().logs.pending() > 0,
        "the logs wait on the node"
    );
    assert_eq!(a.node.state().logs.dropped(), 0);

    pg.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.node.state().logs.pending() > 0 {
        assert!(Instant::now() < deadline, "the logs were never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let logs: Value = get_json(a.url(&format!("/v1/functions/f/logs?request_id={id}"))).await;
        assert_eq!(
            logs["logs"][0]["request_id"],
            id.as_str(),
            "the log of {id}, made while the store was down"
        );
    }
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_cluster_idle_node_steals_queued_invocations() {
    // Node a runs one invocation at a time and does not steal; node b is idle and steals.
    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let (a, b) = pair(&guest, &pg.url()).await;
    assert_eq!(
        deploy(&a, "slow", "sleep.handler", json!({}))
            .await
            .status(),
        201
    );
    let calls = spawn_sleeps(&a, "slow", 6, 400);
    let mut ran_on = Vec::new();
    for c in calls {
        let (status, node) = c.await.unwrap();
        assert_eq!(status, 200);
        ran_on.push(node);
    }
    assert!(
        ran_on.iter().any(|n| n == "b"),
        "the idle node took some of the queue: {ran_on:?}"
    );
    assert!(ran_on.iter().all(|n| n == "a" || n == "b"));
    b.node.shutdown().await.unwrap();
    a.node.shutdown().await.unwrap();
    assert_eq!(guest.counters().live(), 0);
}

/// `n` invocations of the sleeping function `name` at `node` at once, each `ms` long: each
/// task answers the status and the node that ran it.
fn spawn_sleeps(
    node: &TestNode,
    name: &str,
    n: usize,
    ms: u64,
) -> Vec<tokio::task::JoinHandle<(reqwest::StatusCode, String)>> {
    (0..n)
        .map(|_| {
            let url = node.url(&format!("/2015-03-31/functions/{name}/invocations"));
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .json(&json!({ "ms": ms }))
                    .send()
                    .await
                    .unwrap();
                let ran_on = r.headers()["x-ignition-node"].to_str().unwrap().to_owned();
                (r.status(), ran_on)
            })
        })
        .collect()
}

/// Two in-process nodes in one cluster on the store at `url`: `a` runs one invocation at a time
/// and never steals.
async fn pair(guest: &InProcessGuest, url: &str) -> (TestNode, TestNode) {
    let a_dir = tempfile::tempdir().unwrap();
    let mut a_cfg = config(a_dir.path(), guest);
    let a_cluster = free_addr();
    a_cfg.store = Some(url.to_owned());
    a_cfg.cluster.node_id = Some("a".to_owned());
    a_cfg.cluster.addr = Some(a_cluster);
    a_cfg.cluster.slots = Some(1);
    a_cfg.cluster.no_steal = true;
    a_cfg.cluster.lease = Some(Duration::from_millis(600));
    a_cfg.worker.pool_memory_mib = 0;
    let a = ignition_node::start(a_cfg).await.unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut b_cfg = config(b_dir.path(), guest);
    b_cfg.store = Some(url.to_owned());
    b_cfg.cluster.node_id = Some("b".to_owned());
    b_cfg.cluster.addr = Some(free_addr());
    b_cfg.cluster.peers = vec![a_cluster.to_string()];
    b_cfg.cluster.lease = Some(Duration::from_millis(600));
    b_cfg.worker.pool_memory_mib = 0;
    let b = ignition_node::start(b_cfg).await.unwrap();
    let (a, b) = (
        TestNode {
            node: a,
            counters: guest.counters(),
            _dir: a_dir,
        },
        TestNode {
            node: b,
            counters: guest.counters(),
            _dir: b_dir,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in [&a, &b] {
        loop {
            let s: Value = get_json(n.url("/v1/stats")).await;
            if s["cluster"]["peers"].as_u64() >= Some(1) {
                break;
            }
            assert!(Instant::now() < deadline, "the nodes never met: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_cluster_console_node_page_shows_every_node_with_its_slots() {
    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let (a, b) = pair(&guest, &pg.url()).await;
    let page = reqwest::get(b.url("/ui/node"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = |node: &str| {
        page.split(&format!("data-node=\"{node}\""))
            .nth(1)
            .and_then(|r| r.split("</tr>").next())
            .unwrap_or_else(|| panic!("no row for {node}: {page}"))
            .to_owned()
    };
    assert!(row("b").contains("(this node)"));
    // a has one slot (`pair` gives it one), and answers the probe.
    let a_row = row("a");
    assert!(!a_row.contains("not answering"), "{a_row}");
    assert!(a_row.contains("<td class=\"num\">1</td>"), "{a_row}");
    a.node.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = reqwest::get(b.url("/ui/node"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Gone: either unreachable or dropped from the members.
        let a_row = page
            .split("data-node=\"a\"")
            .nth(1)
            .map(|r| r.split("</tr>").next().unwrap_or(""));
        if a_row.is_none_or(|r| r.contains("not answering")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a still shows as answering: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_cluster_invocations_held_by_a_thief_that_stops_run_again_at_their_origin() {
    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let (a, b) = pair(&guest, &pg.url()).await;
    assert_eq!(
        deploy(&a, "slow", "sleep.handler", json!({}))
            .await
            .status(),
        201
    );
    let calls = spawn_sleeps(&a, "slow", 5, 1500);
    // Wait until b holds stolen work, then stop it mid-invocation.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s: Value = get_json(b.url("/v1/stats")).await;
        if s["cluster"]["stolen"].as_u64() >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "b never stole: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.node.shutdown().await.unwrap();
    for c in calls {
        let (status, node) = c.await.unwrap();
        assert_eq!(status, 200, "every caller is answered");
        assert_eq!(
            node, "a",
            "what b held ran again at its origin after the lease"
        );
    }
    let s: Value = get_json(a.url("/v1/stats")).await;
    assert!(s["cluster"]["reclaimed"].as_u64() >= Some(1), "{s}");
    a.node.shutdown().await.unwrap();
    assert_eq!(guest.counters().live(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_nodes_carry_on_through_a_primarys_failover() {
    let mut primary = PgServer::start().unwrap();
    let standby = primary.standby().unwrap();
    let url = primary.failover_url(&standby);
    let guest = InProcessGuest::new();
    let nodes = cluster(&guest, &url, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_eq!(
        deploy(a, "f", "echo.handler", json!({})).await.status(),
        201
    );
    assert_eq!(invoke(b, "f", &json!({})).await.status(), 200);
    // Let the standby catch up, then lose the primary and promote the standby.
    tokio::time::sleep(Duration::from_millis(500)).await;
    primary.stop();
    standby.promote().unwrap();
    // Invocations of the cached function never stopped; writes resume on the new primary,
    // at either node, without a restart.
    assert_eq!(invoke(b, "f", &json!({})).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = deploy(b, "g", "echo.handler", json!({})).await.status();
        if status == 201 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "no write after the failover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a may still be in the second it waits after a failed connection (it tried while the
    // standby was not yet promoted): 503 until then, then b's deploy.
    loop {
        let status = invoke(a, "g", &json!({})).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "a never read after the failover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_a_reservation_set_at_one_node_applies_at_every_node() {
    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let nodes = cluster(&guest, &pg.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_eq!(
        deploy(a, "slow", "sleep.handler", json!({})).await.status(),
        201
    );
    let r = reqwest::Client::new()
        .put(a.url("/2017-10-31/functions/slow/concurrency"))
        .json(&json!({ "ReservedConcurrentExecutions": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // b learns it within its refresh...
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_json(b.url("/2019-09-30/functions/slow/concurrency")).await
        ["ReservedConcurrentExecutions"]
        != 1
    {
        assert!(Instant::now() < deadline, "b never learned a's reservation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and applies it: two at once at b never both run.
    for _ in 0..5 {
        let payload = json!({ "ms": 400 });
        let (r1, r2) = tokio::join!(invoke(b, "slow", &payload), invoke(b, "slow", &payload));
        assert_ne!(
            (r1.status().as_u16(), r2.status().as_u16()),
            (200, 200),
            "two ran at once under a reservation of 1"
        );
    }
    shutdown(nodes).await;
}

/// A guest whose `overlap.handler` (150 ms) records the most invocations that ever ran at
/// once, across every node using the guest.
fn overlap_guest() -> (InProcessGuest, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let running = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let (r, m) = (Arc::clone(&running), Arc::clone(&most));
    let guest = InProcessGuest::new().with_handler(
        "overlap.handler",
        Arc::new(move |_call| {
            let (r, m) = (Arc::clone(&r), Arc::clone(&m));
            Box::pin(async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                ignition_in_process_guest::Reply::json(&json!({ "ok": true }))
            })
        }),
    );
    (guest, most)
}

/// A function reserved at 1, six invocations at once spread over three nodes, round after
/// round: never two running at once anywhere (the handler, shared by every node's guests,
/// records how many run at once), and every invocation either runs or is refused with 429.
#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_a_reservation_of_one_never_runs_two_at_once_in_the_cluster() {
    use std::sync::atomic::Ordering;

    let (guest, most) = overlap_guest();
    let pg = PgServer::start().unwrap();
    let nodes = cluster(&guest, &pg.url(), 3).await;
    assert_eq!(
        deploy(&nodes[0], "one", "overlap.handler", json!({}))
            .await
            .status(),
        201
    );
    let r = reqwest::Client::new()
        .put(nodes[1].url("/2017-10-31/functions/one/concurrency"))
        .json(&json!({ "ReservedConcurrentExecutions": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Every node knows the reservation before the load.
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_json(n.url("/2019-09-30/functions/one/concurrency")).await
            ["ReservedConcurrentExecutions"]
            != 1
        {
            assert!(
                Instant::now() < deadline,
                "a node never learned the reservation"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (mut ran, mut refused) = (0, 0);
    for _ in 0..15 {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let url = nodes[i % 3].url("/2015-03-31/functions/one/invocations");
                tokio::spawn(async move {
                    reqwest::Client::new()
                        .post(url)
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        for c in calls {
            match c.await.unwrap() {
                200 => ran += 1,
                429 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two ran at once");
    assert!(ran >= 5, "ran {ran}, refused {refused}");
    assert!(refused > 0, "six at once against one permit");
    shutdown(nodes).await;
}

/// A tenant's concurrency quota of 2, set at one node, over two functions invoked six at
/// once spread over three nodes, round after round: never more than two of the tenant's
/// invocations run at once anywhere. And a node that holds no permit yet leases one on the
/// spot: the first invocation at each node runs instead of being refused.
#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_a_tenants_concurrency_quota_holds_across_the_cluster() {
    use std::sync::atomic::Ordering;

    let (guest, most) = overlap_guest();
    let pg = PgServer::start().unwrap();
    let nodes = cluster(&guest, &pg.url(), 3).await;
    for f in ["p", "q"] {
        assert_eq!(
            deploy(&nodes[0], f, "overlap.handler", json!({}))
                .await
                .status(),
            201
        );
    }
    let tenant = ignition_types::DEFAULT_TENANT;
    let r = reqwest::Client::new()
        .put(nodes[1].url(&format!("/v1/tenants/{tenant}/quotas")))
        .json(&json!({ "concurrency": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_json(n.url(&format!("/v1/tenants/{tenant}/quotas"))).await["quotas"]
            ["concurrency"]
            != 2
        {
            assert!(Instant::now() < deadline, "a node never learned the quota");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let r = invoke(n, if i % 2 == 0 { "p" } else { "q" }, &json!({})).await;
        assert_eq!(r.status(), 200, "the first invocation at node {i}");
    }
    let (mut ran, mut refused) = (0, 0);
    for _ in 0..15 {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let f = if i % 2 == 0 { "p" } else { "q" };
                let url = nodes[i % 3].url(&format!("/2015-03-31/functions/{f}/invocations"));
                tokio::spawn(async move {
                    let r = reqwest::Client::new()
                        .post(url)
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    (status, r.text().await.unwrap())
                })
            })
            .collect();
        for c in calls {
            match c.await.unwrap() {
                (200, _) => ran += 1,
                (429, body) => {
                    assert!(body.contains("--quota-concurrency"), "{body}");
                    refused += 1;
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= 2,
        "{most} of the tenant's ran at once under a quota of 2"
    );
    assert!(ran >= 15, "ran {ran}, refused {refused}");
    assert!(refused > 0, "six at once against two permits");
    shutdown(nodes).await;
}

/// One node on `pg`'s store with `f` (echo) deployed.
async fn one_node_serving_f(guest: &InProcessGuest, pg: &PgServer) -> Vec<TestNode> {
    let nodes = cluster(guest, &pg.url(), 1).await;
    assert_eq!(
        deploy(&nodes[0], "f", "echo.handler", json!({}))
            .await
            .status(),
        201
    );
    nodes
}

/// Bursts far below the tenant's quota are never refused: a node short of permits leases
/// more however its invocations interleave (an invocation that found enough held, then lost
/// them to others, leases instead of being refused).
#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_bursts_far_below_the_quota_are_never_refused() {
    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let nodes = one_node_serving_f(&guest, &pg).await;
    let a = &nodes[0];
    let url = a.url("/2015-03-31/functions/f/invocations");
    let client = reqwest::Client::new();
    for round in 0..30 {
        for _ in 0..3 {
            assert_eq!(
                client
                    .post(&url)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
        let burst: Vec<_> = (0..32)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let r = client.post(&url).json(&json!({})).send().await.unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                })
            })
            .collect();
        for b in burst {
            let (status, body) = b.await.unwrap();
            assert_eq!(status, 200, "round {round}: {body}");
        }
    }
    shutdown(nodes).await;
}

/// A node that must ask the store for a permit waits for its answer only so long: with the
/// store stuck on the tenant's permits (another connection holds their lock), an invocation at
/// a node that holds none is answered 429 while the store is still stuck, and once it answers,
/// what it granted is the node's and the next invocation runs.
#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_a_stuck_store_does_not_hold_an_invocation_waiting_for_a_permit() {
    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let nodes = one_node_serving_f(&guest, &pg).await;
    let a = &nodes[0];
    let socket_dir = pg.socket_dir().to_owned();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut db = postgres::Config::new()
            .host_path(&socket_dir)
            .user(ignition_pg_test::USER)
            .dbname("ignition")
            .connect(postgres::NoTls)
            .unwrap();
        let mut tx = db.transaction().unwrap();
        let scope = format!("permits:t:{}", ignition_types::DEFAULT_TENANT);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&scope])
            .unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        tx.commit().unwrap();
    });
    locked_rx.recv().unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(8), invoke(a, "f", &json!({})))
        .await
        .expect("the invocation waited on the stuck store");
    assert_eq!(answered.status(), 429);
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = invoke(a, "f", &json!({})).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            Instant::now() < deadline,
            "never ran once the store answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown(nodes).await;
}

/// A function URL a node has served is served from its cache while PostgreSQL is down, and a
/// URL deleted at one node is gone at another on its next request.
#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_urls_are_served_from_the_cache_and_gone_everywhere_once_deleted() {
    let mut pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let nodes = cluster(&guest, &pg.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_eq!(
        deploy(a, "web", "echo.handler", json!({})).await.status(),
        201
    );
    let r = reqwest::Client::new()
        .post(a.url("/2021-10-31/functions/web/url"))
        .json(&json!({ "AuthType": "NONE" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url: Value = r.json().await.unwrap();
    let url = url["FunctionUrl"].as_str().unwrap().to_owned();
    let path = url[url.find("/lambda-url/").unwrap()..].to_owned();
    let at_b = || reqwest::get(b.url(&format!("{path}x")));
    assert_eq!(at_b().await.unwrap().status(), 200);

    pg.stop();
    for _ in 0..5 {
        assert_eq!(
            at_b().await.unwrap().status(),
            200,
            "a URL b has served, with the store down"
        );
    }
    pg.restart().unwrap();

    // Both nodes reach the store again (a node waits a second after a failed connection, and
    // serves what it has cached meanwhile).
    let deadline = Instant::now() + Duration::from_secs(20);
    while deploy(b, "probe", "echo.handler", json!({})).await.status() == 503 {
        assert!(Instant::now() < deadline, "b never wrote again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let r = reqwest::Client::new()
            .delete(a.url("/2021-10-31/functions/web/url"))
            .send()
            .await
            .unwrap();
        if r.status() == 204 {
            break;
        }
        assert_eq!(r.status(), 503, "only while a reconnects");
        assert!(Instant::now() < deadline, "a never wrote again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        at_b().await.unwrap().status(),
        404,
        "deleted at a, gone at b"
    );
    shutdown(nodes).await;
}

/// Function URLs and schedules on a cluster (#20's cluster half): a URL made at one node is
/// served by every node; a schedule's due time, fired by every node at once, fires once; and
/// with the node that made it gone, the next due time fires at another.
#[tokio::test(flavor = "multi_thread")]
async fn in_process_shared_store_every_node_serves_every_url_and_a_schedule_fires_once() {
    use std::sync::{Arc, Mutex};

    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    let s = Arc::clone(&seen);
    let guest = InProcessGuest::new().with_handler(
        "record.handler",
        Arc::new(move |call| {
            let s = Arc::clone(&s);
            Box::pin(async move {
                s.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&call.payload).unwrap());
                ignition_in_process_guest::Reply::json(&json!({ "statusCode": 200, "body": "hi" }))
            })
        }),
    );
    let pg = PgServer::start().unwrap();
    let nodes = cluster(&guest, &pg.url(), 3).await;
    assert_eq!(
        deploy(&nodes[0], "web", "record.handler", json!({}))
            .await
            .status(),
        201
    );

    // A URL made at a, served by b and c.
    let r = reqwest::Client::new()
        .post(nodes[0].url("/2021-10-31/functions/web/url"))
        .json(&json!({ "AuthType": "NONE" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url: Value = r.json().await.unwrap();
    let url = url["FunctionUrl"].as_str().unwrap().to_owned();
    let path = &url[url.find("/lambda-url/").unwrap()..];
    for n in &nodes[1..] {
        let r = reqwest::get(n.url(&format!("{path}hello"))).await.unwrap();
        assert_eq!(r.status(), 200, "{path} at {}", n.node.addr());
        assert_eq!(r.text().await.unwrap(), "hi");
    }

    // A schedule made at a: every node fires the due time at once; it fires once.
    let r = reqwest::Client::new()
        .post(nodes[0].url("/schedules/tick"))
        .json(&json!({
            "ScheduleExpression": "rate(1 minute)",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": {
                "Arn": "arn:aws:lambda:us-east-1:000000000000:function:web",
                "RoleArn": "arn:aws:iam::000000000000:role/scheduler",
                "Input": "{\"from\": \"the schedule\"}",
            },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = get_json(nodes[1].url("/schedules/tick")).await;
    let first = (got["IgnitionNextFire"].as_f64().unwrap() * 1000.0) as i64;
    let fired: usize = fire_everywhere(&nodes, first).await;
    assert_eq!(fired, 1, "three nodes fired one due time");
    let scheduled = |seen: &Mutex<Vec<Value>>| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|e| e["from"] == "the schedule")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while scheduled(&seen) < 1 {
        assert!(Instant::now() < deadline, "the firing never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a, which made the schedule, goes; the next due time fires at the others, once.
    let mut nodes = nodes;
    let a = nodes.remove(0);
    a.node.shutdown().await.unwrap();
    let fired: usize = fire_everywhere(&nodes, first + 60_000).await;
    assert_eq!(fired, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while scheduled(&seen) < 2 {
        assert!(Instant::now() < deadline, "the second firing never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(scheduled(&seen), 2, "each due time ran once");
    shutdown(nodes).await;
}

/// Every node in `nodes` fires what is due at `now_ms`, all at once; how many fired in all.
async fn fire_everywhere(nodes: &[TestNode], now_ms: i64) -> usize {
    let fires = nodes.iter().map(|n| {
        let state = n.node.state().clone();
        tokio::spawn(async move { ignition_api::fire_due(&state, now_ms).await.unwrap() })
    });
    let mut total = 0;
    for f in fires.collect::<Vec<_>>() {
        total += f.await.unwrap();
    }
    total
}

/// The cluster's mutual TLS names each node (#18): a node started with another node's
/// certificate stops at start, saying why; a member's certificate speaks only for its own node
/// (a call on another's behalf is refused); and a node's address answers only as that node.
#[tokio::test(flavor = "multi_thread")]
async fn in_process_cluster_tls_a_certificate_speaks_only_for_the_node_it_names() {
    use ignition_cluster::pb;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let pg = PgServer::start().unwrap();
    let guest = InProcessGuest::new();
    let certs_dir = tempfile::tempdir().unwrap();
    let made = ignition_cluster::make_certs(&["a".into(), "b".into(), "m".into()]).unwrap();
    let ca_path = certs_dir.path().join("ca.pem");
    std::fs::write(&ca_path, &made.ca).unwrap();
    let mut pems = std::collections::HashMap::new();
    for (id, cert, key) in &made.nodes {
        let (c, k) = (
            certs_dir.path().join(format!("{id}.pem")),
            certs_dir.path().join(format!("{id}-key.pem")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        pems.insert(id.as_str(), (c, k, cert.clone(), key.clone()));
    }
    let tls = |id: &str| ignition_node::ClusterTlsFiles {
        ca: ca_path.clone(),
        cert: pems[id].0.clone(),
        key: pems[id].1.clone(),
    };
    let node_config = |dir: &std::path::Path, id: &str, cert_of: &str, addr, peers| {
        let mut c = config(dir, &guest);
        c.store = Some(pg.url());
        c.cluster.node_id = Some(id.to_owned());
        c.cluster.addr = Some(addr);
        c.cluster.peers = peers;
        c.cluster.tls = Some(tls(cert_of));
        c.worker.pool_memory_mib = 0;
        c
    };

    // Started with m's certificate as node b: refused, naming what to do.
    let dir = tempfile::tempdir().unwrap();
    let Err(e) = ignition_node::start(node_config(dir.path(), "b", "m", free_addr(), vec![])).await
    else {
        panic!("a node with another's certificate must not start");
    };
    let e = e.to_string();
    assert!(
        e.contains("not node \"b\"'s") && e.contains("ignition cluster certs"),
        "{e}"
    );

    let a_addr = free_addr();
    let mut nodes = Vec::new();
    for (id, addr, peers) in [
        ("a", a_addr, vec![]),
        ("b", free_addr(), vec![a_addr.to_string()]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let node = ignition_node::start(node_config(dir.path(), id, id, addr, peers))
            .await
            .unwrap();
        nodes.push(TestNode {
            node,
            counters: guest.counters(),
            _dir: dir,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s: Value = get_json(nodes[0].url("/v1/stats")).await;
        if s["cluster"]["peers"].as_u64() >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "a and b never met: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A client of a's cluster port holding `cert_of`'s certificate, expecting node `expect`.
    let client = |cert_of: &str, expect: &str| {
        let (_, _, cert, key) = &pems[cert_of];
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&made.ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(ignition_cluster::node_tls_name(expect));
        let channel = Endpoint::from_shared(format!("https://{a_addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy();
        pb::node_client::NodeClient::new(channel)
    };
    let mut m = client("m", "a");
    let denied = m
        .steal(pb::StealRequest {
            thief: "b".into(),
            max: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    let denied = m
        .renew(pb::RenewRequest {
            thief: "b".into(),
            held: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    let denied = m
        .complete(pb::CompleteRequest {
            id: "x".into(),
            attempt: 1,
            executor: "b".into(),
            result: None,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    // On its own behalf the member is answered (nothing queued, nothing lent).
    let own = m
        .steal(pb::StealRequest {
            thief: "m".into(),
            max: 1,
        })
        .await
        .unwrap();
    assert!(own.into_inner().invocations.is_empty());
    // a's address does not pass for b's: a channel made for b there fails its handshake.
    let mut as_b = client("m", "b");
    let e = as_b
        .probe(pb::ProbeRequest { from: "m".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    shutdown(nodes).await;
}
