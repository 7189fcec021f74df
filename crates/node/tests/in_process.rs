//! Whole nodes started in-process, with the in-process guest as their VMM (no root, no QEMU, no
//! guest image): the API, admission, the event dispatcher, and the node's start and shutdown
//! (a cluster's nodes, which share a PostgreSQL store, are in `in_process_shared_store.rs`). Every test here says `in_process` in its name; what involves a
//! real VM is tested in `crates/cli/tests` with microVMs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ignition_in_process_guest::InProcessGuest;
use serde_json::{json, Value};

mod in_process_support;

use in_process_support::*;

#[tokio::test]
async fn in_process_node_deploys_invokes_and_shuts_down_leaving_no_vm() {
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    let r = reqwest::get(n.url("/")).await.unwrap();
    assert_eq!(r.status(), 200);
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["node"], "n1");

    assert_eq!(
        deploy(&n, "hello", "echo.handler", json!({}))
            .await
            .status(),
        201
    );
    let r = invoke(&n, "hello", &json!({"greeting": "hi"})).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-amzn-RequestId").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"greeting": "hi"}));

    // A handler error comes back as Lambda reports it.
    assert_eq!(
        deploy(&n, "broken", "fail.handler", json!({}))
            .await
            .status(),
        201
    );
    let r = invoke(&n, "broken", &json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["X-Amz-Function-Error"], "Unhandled");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errorType"], "ValueError");

    // The first invocation built the snapshot (a boot) and ran from a restore.
    assert!(n.counters.boots() >= 1, "the base snapshot was booted");
    assert!(
        n.counters.restores() >= 2,
        "invocations ran in restored VMs"
    );
    let counters = Arc::clone(&n.counters);
    n.node.shutdown().await.unwrap();
    assert_eq!(
        counters.live(),
        0,
        "every VM is destroyed when shutdown returns"
    );
}

#[tokio::test]
async fn in_process_unknown_function_and_bad_deploys_get_lambda_errors() {
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    let r = invoke(&n, "nope", &json!({})).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-amzn-ErrorType"], "ResourceNotFoundException");
    let r = deploy(&n, "bad", "echo.handler", json!({"memory_mib": 1})).await;
    assert_eq!(r.status(), 400, "{:?}", r.text().await);
    let r = deploy(&n, "bad", "echo.handler", json!({"runtime": "cobol"})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        n.counters.boots() + n.counters.restores(),
        0,
        "no VM for bad input"
    );
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_reuse_keeps_one_vm_for_a_function() {
    let n = start_with(InProcessGuest::new(), |c| c.worker.pool_memory_mib = 0).await;
    assert_eq!(
        deploy(&n, "counter", "vm.handler", json!({"reuse": true}))
            .await
            .status(),
        201
    );
    let mut vms = Vec::new();
    for want in 1..=3 {
        let body: Value = invoke(&n, "counter", &json!({}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["served"], want, "the same VM served again: {body}");
        vms.push(body["vm_id"].as_str().unwrap().to_owned());
    }
    assert!(vms.windows(2).all(|w| w[0] == w[1]));
    let stats: Value = get_json(n.url("/v1/stats")).await;
    assert_eq!(stats["worker"]["warm_hits"], 2, "{stats}");
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_sterile_invocations_never_share_a_vm() {
    let n = start_with(InProcessGuest::new(), |c| c.worker.pool_memory_mib = 0).await;
    assert_eq!(
        deploy(&n, "vm", "vm.handler", json!({})).await.status(),
        201
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let body: Value = invoke(&n, "vm", &json!({})).await.json().await.unwrap();
        assert_eq!(body["served"], 1);
        assert_eq!(body["restored"], true);
        assert!(seen.insert(body["vm_id"].as_str().unwrap().to_owned()));
    }
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_admission_runs_at_most_max_vms_at_once() {
    let n = start_with(InProcessGuest::new(), |c| {
        c.worker.max_vms = 2;
        c.worker.pool_memory_mib = 0;
    })
    .await;
    assert_eq!(
        deploy(&n, "slow", "sleep.handler", json!({}))
            .await
            .status(),
        201
    );
    // The first invocation builds the snapshot; the rest measure admission.
    assert_eq!(invoke(&n, "slow", &json!({"ms": 1})).await.status(), 200);
    let t = Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let url = n.url("/2015-03-31/functions/slow/invocations");
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .json(&json!({"ms": 300}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let took = t.elapsed();
    // Six 300 ms handlers two at a time take three rounds; all at once would take one.
    assert!(took >= Duration::from_millis(850), "took {took:?}");
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_timeout_is_reported_as_lambda_does_and_the_vm_is_gone() {
    let n = start_with(InProcessGuest::new(), |c| c.worker.pool_memory_mib = 0).await;
    assert_eq!(
        deploy(&n, "late", "sleep.handler", json!({"timeout_s": 1}))
            .await
            .status(),
        201
    );
    let r = invoke(&n, "late", &json!({"ms": 5000})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["X-Amz-Function-Error"], "Unhandled");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errorType"], "Sandbox.Timedout", "{body}");
    let counters = Arc::clone(&n.counters);
    n.node.state().worker.settle().await;
    assert_eq!(counters.live(), 0, "a timed-out VM is destroyed");
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_warm_pool_serves_from_ready_slots() {
    let n = start_with(InProcessGuest::new(), |c| c.worker.pool_memory_mib = 512).await;
    assert_eq!(
        deploy(&n, "pooled", "vm.handler", json!({})).await.status(),
        201
    );
    let r = reqwest::Client::new()
        .put(n.url("/v1/functions/pooled/pool"))
        .json(&json!({"min_ready": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool: Value = get_json(n.url("/v1/functions/pooled/pool")).await;
        if pool["pool"]["ready"].as_u64() >= Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "the pool never filled: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = invoke(&n, "pooled", &json!({})).await;
    assert_eq!(r.headers()["x-ignition-start"], "pool");
    let counters = Arc::clone(&n.counters);
    n.node.shutdown().await.unwrap();
    assert_eq!(counters.live(), 0, "slots are destroyed at shutdown");
}

#[tokio::test]
async fn in_process_asynchronous_events_run_and_failures_are_kept() {
    let n = start_with(InProcessGuest::new(), |c| {
        c.api.async_retries = 1;
        c.api.async_retry_delay = Duration::from_millis(50);
    })
    .await;
    assert_eq!(
        deploy(&n, "ev", "echo.handler", json!({})).await.status(),
        201
    );
    assert_eq!(
        deploy(&n, "bad", "fail.handler", json!({})).await.status(),
        201
    );
    let event = |name: &'static str| {
        reqwest::Client::new()
            .post(n.url(&format!("/2015-03-31/functions/{name}/invocations")))
            .header("X-Amz-Invocation-Type", "Event")
            .json(&json!({"n": 1}))
            .send()
    };
    assert_eq!(event("ev").await.unwrap().status(), 202);
    assert_eq!(event("bad").await.unwrap().status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed: Value = get_json(n.url("/v1/functions/bad/failed-events")).await;
        if failed["events"].as_array().is_some_and(|a| !a.is_empty()) {
            let e = &failed["events"][0];
            assert_eq!(e["attempts"], 2, "the first attempt and one retry: {e}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing event never landed: {failed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The good event ran once: its log is there.
    let logs: Value = get_json(n.url("/v1/functions/ev/logs")).await;
    assert!(logs.to_string().contains("echo "), "{logs}");
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_node_wide_endpoints_need_an_operator_key() {
    let n = start_with(InProcessGuest::new(), |c| c.api.dev = false).await;
    let store = &n.node.state().store;
    let tenant = store.create_key("acme").unwrap();
    let operator = store.create_operator_key().unwrap();
    let bearer = |k: &ignition_store::AccessKey| {
        format!("Bearer {}:{}", k.access_key_id, k.secret_access_key)
    };
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::GET, "/v1/stats"),
        (reqwest::Method::POST, "/v1/floor"),
    ] {
        let r = http
            .request(method.clone(), n.url(path))
            .header("authorization", bearer(&tenant))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "a tenant's key on {path}");
        assert_eq!(r.headers()["x-amzn-ErrorType"], "AccessDeniedException");
        let r = http
            .request(method, n.url(path))
            .header("authorization", bearer(&operator))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the operator's key on {path}");
    }
    // The operator's key reaches no tenant's functions, and a tenant's works as before.
    let r = http
        .get(n.url("/v1/functions"))
        .header("authorization", bearer(&tenant))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .put(n.url("/v1/functions/f"))
        .header("authorization", bearer(&operator))
        .json(&json!({"runtime": "python3", "handler": "echo.handler", "code": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "an operator owns no functions");
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_rules_that_only_reach_protected_destinations_are_refused_at_deploy() {
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    for (rule, range) in [
        ("169.254.169.254/32:80/tcp", "169.254.0.0/16"),
        ("10.1.0.0/16:5432", "10.0.0.0/8"),
        ("192.168.1.10/32:22", "192.168.0.0/16"),
        ("127.0.0.1/32:7070", "127.0.0.0/8"),
    ] {
        let r = deploy(&n, "f", "echo.handler", json!({ "egress": [rule] })).await;
        assert_eq!(r.status(), 400, "{rule}");
        assert_eq!(
            r.headers()["x-amzn-ErrorType"],
            "InvalidParameterValueException"
        );
        let body: Value = r.json().await.unwrap();
        let msg = body["errorMessage"].as_str().unwrap();
        assert!(msg.contains(range), "{rule}: {msg}");
    }
    // A wider rule is accepted: the protected ranges are carved out of it on the host.
    let r = deploy(
        &n,
        "f",
        "echo.handler",
        json!({ "egress": ["0.0.0.0/0:443/tcp"] }),
    )
    .await;
    assert_eq!(r.status(), 201);
    n.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn in_process_a_function_whose_guest_always_dies_fails_clearly_and_the_node_still_stops() {
    let n = start_with(InProcessGuest::new(), |c| c.worker.pool_memory_mib = 512).await;
    let handler = ignition_in_process_guest::CRASH_ON_LOAD;
    assert_eq!(deploy(&n, "doomed", handler, json!({})).await.status(), 201);
    let r = invoke(&n, "doomed", &json!({})).await;
    assert_eq!(r.status(), 502, "{:?}", r.text().await);
    // A pool asked to keep slots of it keeps failing to build them, in the background.
    let r = reqwest::Client::new()
        .put(n.url("/v1/functions/doomed/pool"))
        .json(&json!({"min_ready": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // It backs off, says why, and the function is reported Failed with the reason.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pool = loop {
        let pool = get_json(n.url("/v1/functions/doomed/pool")).await["pool"].clone();
        if pool["failures"].as_u64().unwrap() >= 3 {
            break pool;
        }
        assert!(Instant::now() < deadline, "{pool}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        pool["last_error"].as_str().unwrap().contains("snapshot"),
        "{pool}"
    );
    assert!(pool["retry_in_ms"].as_u64().unwrap() > 0, "{pool}");
    let f = get_json(n.url("/2015-03-31/functions/doomed")).await;
    assert_eq!(f["Configuration"]["State"], "Failed", "{f}");
    assert!(
        f["Configuration"]["StateReason"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{f}"
    );
    let boots = n.counters.boots() + n.counters.restores();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        n.counters.boots() + n.counters.restores() <= boots + 2,
        "backing off, not retrying in a loop"
    );
    let counters = Arc::clone(&n.counters);
    tokio::time::timeout(Duration::from_secs(30), n.node.shutdown())
        .await
        .expect("the node stops with a failing pool")
        .unwrap();
    assert_eq!(counters.live(), 0);
}

fn percentile_50(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// #19's fairness measurement, in-process (the guests' handlers sleep; no VM): on a node with 2
/// slots, tenant A has 40 half-second invocations waiting; tenant B then invokes a short
/// function 10 times, one after another. B waits for a slot behind one of A's at most, not
/// behind A's whole queue (~10 s in arrival order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_tenant_with_a_long_queue_does_not_hold_back_another() {
    const A_MS: u64 = 500;
    let n = start_with(InProcessGuest::new(), |c| {
        c.api.dev = false;
        c.worker.max_vms = 2;
        c.worker.pool_memory_mib = 0;
    })
    .await;
    let store = &n.node.state().store;
    let bearer = |k: ignition_store::AccessKey| {
        format!("Bearer {}:{}", k.access_key_id, k.secret_access_key)
    };
    let (a, b) = (
        bearer(store.create_key("tenanta").unwrap()),
        bearer(store.create_key("tenantb").unwrap()),
    );
    let http = reqwest::Client::new();
    for (who, name, handler) in [(&a, "slow", "sleep.handler"), (&b, "quick", "echo.handler")] {
        let module = format!("{}.py", handler.split('.').next().unwrap());
        let code = zip_of(&[(&module, b"def handler(event, context):\n    return event\n")]);
        let r = http
            .put(n.url(&format!("/v1/functions/{name}")))
            .header("authorization", who.as_str())
            .json(&json!({
                "runtime": "python3",
                "handler": handler,
                "code": base64::engine::general_purpose::STANDARD.encode(code),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let quick = |http: reqwest::Client, b: String, url: String| async move {
        let t = Instant::now();
        let r = http
            .post(url)
            .header("authorization", b)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        t.elapsed()
    };
    let quick_url = n.url("/2015-03-31/functions/quick/invocations");
    // Each function's code image is made before anything is measured.
    let warm = http
        .post(n.url("/2015-03-31/functions/slow/invocations"))
        .header("authorization", a.clone())
        .json(&json!({ "ms": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    quick(http.clone(), b.clone(), quick_url.clone()).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(quick(http.clone(), b.clone(), quick_url.clone()).await);
    }
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let (http, a) = (http.clone(), a.clone());
            let url = n.url("/2015-03-31/functions/slow/invocations");
            tokio::spawn(async move {
                http.post(url)
                    .header("authorization", a)
                    .json(&json!({ "ms": A_MS }))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    // A's invocations are waiting (two run, the rest are queued) before B is measured.
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.node.state().node.stats().await.queued < 30 {
        assert!(Instant::now() < deadline, "A's invocations never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut loaded = Vec::new();
    for _ in 0..10 {
        loaded.push(quick(http.clone(), b.clone(), quick_url.clone()).await);
    }
    // A's backlog (20 rounds of two) outlasts B's ten calls, so every one of them met it: the
    // longest is the measure (in arrival order the first would wait ~10 s, the rest none).
    let worst = loaded.iter().copied().max().unwrap();
    let (idle, loaded) = (percentile_50(idle), percentile_50(loaded));
    let bound = 2 * (idle + Duration::from_millis(A_MS));
    eprintln!(
        "tenant B: P50 idle {idle:?}; behind A's queue P50 {loaded:?}, worst {worst:?} (bound {bound:?})"
    );
    assert!(worst <= bound, "B waited {worst:?} (idle P50 {idle:?})");
    for f in flood {
        assert_eq!(f.await.unwrap(), 200);
    }
    n.node.shutdown().await.unwrap();
}

/// #19: an event its function's reservation of 0 throttles was retried every second forever,
/// holding the node's event queue. Now it backs off and, past its maximum age, goes to the
/// failed events with the reason.
#[tokio::test]
async fn in_process_a_throttled_event_backs_off_and_expires_into_the_failed_events() {
    let n = start_with(InProcessGuest::new(), |c| {
        c.api.max_event_age = Duration::from_secs(3);
    })
    .await;
    assert_eq!(
        deploy(&n, "off", "echo.handler", json!({})).await.status(),
        201
    );
    let http = reqwest::Client::new();
    let r = http
        .put(n.url("/2017-10-31/functions/off/concurrency"))
        .json(&json!({ "ReservedConcurrentExecutions": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(n.url("/2015-03-31/functions/off/invocations"))
        .header("X-Amz-Invocation-Type", "Event")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let failed: Value = get_json(n.url("/v1/functions/off/failed-events")).await;
        if let Some(e) = failed["events"].as_array().and_then(|a| a.first()) {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the throttled event never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = failed["last_error"].as_str().unwrap();
    assert!(why.contains("MaximumEventAgeInSeconds"), "{failed}");
    assert_eq!(
        failed["attempts"], 0,
        "throttles are not attempts: {failed}"
    );
    // Backing off 1 s, then 2 s: at most three throttles in three seconds, not one a second
    // for ever.
    let throttles = failed["throttles"].as_u64().unwrap();
    assert!((1..=3).contains(&throttles), "{failed}");
    // Nothing is left queued for the node.
    let (queued, running, _) = n.node.state().store.event_counts().unwrap();
    assert_eq!((queued, running), (0, 0));
    n.node.shutdown().await.unwrap();
}
