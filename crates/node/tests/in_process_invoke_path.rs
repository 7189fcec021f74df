//! What an invocation holds while it waits, on nodes started in-process with the in-process
//! guest as their VMM: it reads no code (the worker puts each bundle on disk once), the
//! node's queue is bounded, and a queued invocation whose caller has gone never takes a VM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process_support;

use std::time::Duration;

use base64::Engine as _;
use ignition_in_process_guest::InProcessGuest;
use in_process_support::*;
use serde_json::{json, Value};

async fn stats(n: &TestNode) -> Value {
    get_json(n.url("/v1/stats")).await
}

#[tokio::test]
async fn in_process_invocations_read_no_code_and_each_bundle_is_put_on_disk_once() {
    let n = start_with(InProcessGuest::new(), |_| {}).await;
    assert_eq!(
        deploy(&n, "echo", "echo.handler", json!({})).await.status(),
        201
    );
    for _ in 0..5 {
        assert_eq!(invoke(&n, "echo", &json!({})).await.status(), 200);
    }
    let built = |s: &Value| s["worker"]["code_images_built"].as_u64();
    assert_eq!(built(&stats(&n).await), Some(1), "{}", stats(&n).await);
    // A new configuration of the same code uses the same image.
    assert_eq!(
        deploy(&n, "echo", "echo.handler", json!({"memory_mib": 256}))
            .await
            .status(),
        200
    );
    assert_eq!(invoke(&n, "echo", &json!({})).await.status(), 200);
    assert_eq!(built(&stats(&n).await), Some(1));
    // Other code is another image, made when it is first invoked, not at deploy.
    let other = zip_of(&[("echo.py", b"# other code\n")]);
    let code = base64::engine::general_purpose::STANDARD.encode(other);
    assert_eq!(
        deploy(&n, "other", "echo.handler", json!({ "code": code }))
            .await
            .status(),
        201
    );
    assert_eq!(built(&stats(&n).await), Some(1));
    assert_eq!(invoke(&n, "other", &json!({})).await.status(), 200);
    assert_eq!(built(&stats(&n).await), Some(2));
    n.node.shutdown().await.unwrap();
}

fn sleep_in_background(
    n: &TestNode,
    ms: u64,
    timeout: Option<Duration>,
) -> tokio::task::JoinHandle<Result<u16, String>> {
    let url = n.url("/2015-03-31/functions/slow/invocations");
    tokio::spawn(async move {
        let mut client = reqwest::Client::builder();
        if let Some(t) = timeout {
            client = client.timeout(t);
        }
        client
            .build()
            .unwrap()
            .post(url)
            .json(&json!({ "ms": ms }))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_queued_invocation_whose_caller_left_never_runs() {
    let guest = InProcessGuest::new();
    let n = start_with(guest, |c| c.worker.max_vms = 1).await;
    assert_eq!(
        deploy(&n, "slow", "sleep.handler", json!({}))
            .await
            .status(),
        201
    );
    let running = sleep_in_background(&n, 1500, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Three callers that give up after 300 ms, while the one slot is busy.
    let gone: Vec<_> = (0..3)
        .map(|_| sleep_in_background(&n, 10, Some(Duration::from_millis(300))))
        .collect();
    for g in gone {
        assert!(g.await.unwrap().is_err(), "the client timed out");
    }
    assert_eq!(running.await.unwrap(), Ok(200));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = stats(&n).await;
    assert_eq!(s["cluster"]["callers_gone"], 3, "{s}");
    assert_eq!(
        n.counters.invocations(),
        1,
        "only the caller that stayed got a VM"
    );
    n.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_the_nodes_queue_is_bounded() {
    let n = start_with(InProcessGuest::new(), |c| {
        c.worker.max_vms = 1;
        c.worker.max_queued = 2;
    })
    .await;
    assert_eq!(
        deploy(&n, "slow", "sleep.handler", json!({}))
            .await
            .status(),
        201
    );
    let running = sleep_in_background(&n, 1500, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued: Vec<_> = (0..2).map(|_| sleep_in_background(&n, 10, None)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reqwest::Client::new()
        .post(n.url("/2015-03-31/functions/slow/invocations"))
        .json(&json!({"ms": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["Reason"], "ConcurrentInvocationLimitExceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("--max-queued-invocations"),
        "{e}"
    );
    assert_eq!(running.await.unwrap(), Ok(200));
    for q in queued {
        assert_eq!(q.await.unwrap(), Ok(200), "what was queued runs");
    }
    assert_eq!(stats(&n).await["cluster"]["queue_full"], 1);
    n.node.shutdown().await.unwrap();
}
