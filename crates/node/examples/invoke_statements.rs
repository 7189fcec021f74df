//! What a node costs its shared PostgreSQL store per synchronous invocation of a function it
//! has cached: statements sent while invoking it N times (by one client, then by 16 at once),
//! less what the node sends idle in the same time (its background work: permits, limits, the
//! event queue, schedules), per invocation. The invocation's log is in the count (written off
//! the response's path, as many as wait in one transaction); its configuration, code and
//! permits are not (the node's cache, and permits it holds). The in-process guest is the VMM: this measures the store, not VMs.
//!
//! `cargo run --release -p ignition-node --features pg-tests --example invoke_statements [N]`
//! (N defaults to 2000; needs Debian's postgresql, as the tests do).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ignition_in_process_guest::InProcessGuest;
use ignition_pg_test::PgServer;
use serde_json::json;

#[path = "../tests/in_process_support/mod.rs"]
mod in_process_support;

use in_process_support::*;

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(2000, |a| a.parse().expect("N: a number of invocations"));
    let pg = PgServer::start().unwrap();
    let url = pg.url();
    let node = start_with(InProcessGuest::new(), |c| {
        c.store = Some(url);
        c.worker.pool_memory_mib = 0;
    })
    .await;
    assert_eq!(
        deploy(&node, "echo", "echo.handler", json!({}))
            .await
            .status(),
        201
    );
    assert_eq!(invoke(&node, "echo", &json!({})).await.status(), 200);
    let state = node.node.state();
    let settle = |state: &ignition_api::AppState| {
        let state = state.clone();
        async move {
            while state.logs.pending() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    settle(state).await;

    let (s0, t0) = (state.store.statements(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_per_s = (state.store.statements() - s0) as f64 / t0.elapsed().as_secs_f64();

    println!("| clients at once | invocations | statements while invoking | idle, per second | per invocation, its log included |");
    println!("|---|---|---|---|---|");
    for clients in [1, 16] {
        let (s1, t1) = (state.store.statements(), Instant::now());
        let each = n / clients;
        let calls: Vec<_> = (0..clients)
            .map(|_| {
                let url = node.url("/2015-03-31/functions/echo/invocations");
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    for _ in 0..each {
                        let r = client.post(&url).json(&json!({})).send().await.unwrap();
                        let status = r.status();
                        assert_eq!(status, 200, "{}", r.text().await.unwrap());
                    }
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        settle(state).await;
        let took = t1.elapsed().as_secs_f64();
        let sent = (state.store.statements() - s1) as f64;
        let invocations = each * clients;
        let per_invocation = (sent - idle_per_s * took) / invocations as f64;
        println!("| {clients} | {invocations} in {took:.1} s | {sent:.0} | {idle_per_s:.1} | {per_invocation:.3} |");
    }
    node.node.shutdown().await.unwrap();
}
