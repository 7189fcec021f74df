//! The worker's own logic with the in-process guest as its VMM (no root, no QEMU): where a
//! guest comes from, the snapshot store, the warm pool's minimum and keep-alive, the reuse
//! cap, and a shutdown that leaves no guest. Real VMs: `hostile_guest.rs` and `crates/cli/tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ignition_in_process_guest::{placeholder_image, InProcessGuest};
use ignition_proto::{FunctionSpec, Outcome, Runtime};
use ignition_worker::{Job, PoolConfig, StartKind, StartMode, Worker, WorkerConfig};

fn worker(
    guest: &InProcessGuest,
    dir: &std::path::Path,
    max_vms: usize,
    pool_mib: u64,
) -> Arc<Worker> {
    Worker::new(
        Arc::new(guest.clone()),
        placeholder_image(&dir.join("image")).unwrap(),
        WorkerConfig {
            max_vms,
            boot_timeout: Duration::from_secs(5),
            load_timeout: Duration::from_secs(5),
            snapshot_dir: dir.join("snapshots"),
            snapshot_disk_mib: None,
            pool: PoolConfig {
                memory_budget_mib: pool_mib,
                keep_alive: Duration::from_millis(500),
                refill_parallelism: 2,
            },
            network: None,
            code_source: None,
        },
    )
}

/// An in-process guest runs closures, not the code; the worker still puts the code on a drive.
fn empty_tar() -> Vec<u8> {
    tar::Builder::new(Vec::new()).into_inner().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn job(name: &str, handler: &str, reuse: bool) -> Job {
    Job {
        function: Arc::new(FunctionSpec {
            name: name.into(),
            runtime: Runtime::Python3,
            handler: handler.into(),
            memory_mib: 128,
            env: Vec::new(),
            code: ignition_proto::Code::Tar(empty_tar()),
            display_name: name.into(),
            version: "$LATEST".into(),
            account_id: ignition_types::DEFAULT_ACCOUNT_ID.into(),
            image: None,
        }),
        code_sha256: sha256_hex(&empty_tar()),
        layers: Arc::from(Vec::new()),
        reuse,
        egress: Arc::from(Vec::new()),
        request_id: uuid_like(),
        payload: b"{}".to_vec(),
        client_context: None,
        timeout: Duration::from_secs(3),
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("req-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn served(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Success(body) => serde_json::from_slice::<serde_json::Value>(body).unwrap()
            ["served"]
            .as_u64()
            .unwrap(),
        other => panic!("not a success: {other:?}"),
    }
}

#[tokio::test]
async fn in_process_worker_builds_a_snapshot_once_and_restores_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let guest = InProcessGuest::new();
    let w = worker(&guest, dir.path(), 2, 0);
    let first = w
        .run(job("f", "vm.handler", false), StartMode::Auto)
        .await
        .unwrap();
    assert_eq!(first.start, StartKind::Restore);
    let second = w
        .run(job("f", "vm.handler", false), StartMode::Auto)
        .await
        .unwrap();
    assert_eq!(second.start, StartKind::Restore);
    let s = w.stats();
    assert_eq!((s.base_snapshots_built, s.snapshots_built), (1, 1), "{s:?}");
    // A second function of the same memory derives from the same base: no second boot.
    w.run(job("g", "vm.handler", false), StartMode::Auto)
        .await
        .unwrap();
    let s = w.stats();
    assert_eq!(
        (s.base_snapshots_built, s.snapshots_built, s.boots),
        (1, 2, 1),
        "{s:?}"
    );
    // A boot on request still works, and loads the function itself.
    let booted = w
        .run(job("f", "vm.handler", false), StartMode::Boot)
        .await
        .unwrap();
    assert_eq!(booted.start, StartKind::Boot);
    w.shutdown().await;
    assert_eq!(guest.counters().live(), 0);
}

#[tokio::test]
async fn in_process_worker_pool_fills_to_its_minimum_and_serves_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let guest = InProcessGuest::new();
    let w = worker(&guest, dir.path(), 2, 1024);
    let j = job("p", "vm.handler", false);
    w.set_min_ready(
        Arc::clone(&j.function),
        j.code_sha256.clone(),
        Arc::clone(&j.layers),
        Arc::clone(&j.egress),
        2,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.pool_status("p").ready < 2 {
        assert!(Instant::now() < deadline, "{:?}", w.pool_status("p"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = w.run(j, StartMode::Auto).await.unwrap();
    assert_eq!(e.start, StartKind::Pool);
    assert_eq!(w.stats().pool_hits, 1);
    // The minimum holds: the slot taken is replaced.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.pool_status("p").ready < 2 {
        assert!(Instant::now() < deadline, "{:?}", w.pool_status("p"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.shutdown().await;
    assert_eq!(
        guest.counters().live(),
        0,
        "slots are destroyed at shutdown"
    );
}

#[tokio::test]
async fn in_process_worker_keeps_at_most_max_vms_idle_reused_vms() {
    let dir = tempfile::tempdir().unwrap();
    let guest = InProcessGuest::new();
    let w = worker(&guest, dir.path(), 1, 0);
    let a1 = w
        .run(job("a", "vm.handler", true), StartMode::Auto)
        .await
        .unwrap();
    assert_eq!(served(&a1.result.outcome), 1);
    let a2 = w
        .run(job("a", "vm.handler", true), StartMode::Auto)
        .await
        .unwrap();
    assert_eq!(a2.start, StartKind::Warm);
    assert_eq!(served(&a2.result.outcome), 2, "the same VM ran again");
    // Keeping b's VM evicts a's: one idle VM at most with --max-vms 1.
    w.run(job("b", "vm.handler", true), StartMode::Auto)
        .await
        .unwrap();
    let a3 = w
        .run(job("a", "vm.handler", true), StartMode::Auto)
        .await
        .unwrap();
    assert_ne!(a3.start, StartKind::Warm);
    assert_eq!(served(&a3.result.outcome), 1);
    // Idle reused VMs go after the keep-alive.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.live_guests() > 0 {
        assert!(
            Instant::now() < deadline,
            "reused VMs outlived their keep-alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.shutdown().await;
}

#[tokio::test]
async fn in_process_worker_a_failed_invocation_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let guest = InProcessGuest::new();
    let w = worker(&guest, dir.path(), 2, 0);
    let mut j = job("t", "sleep.handler", true);
    j.payload = br#"{"ms": 5000}"#.to_vec();
    j.timeout = Duration::from_millis(200);
    let r = w.run(j, StartMode::Auto).await.unwrap();
    assert!(
        matches!(r.result.outcome, Outcome::Timeout { .. }),
        "{:?}",
        r.result.outcome
    );
    assert_eq!(
        w.live_guests(),
        0,
        "a timed-out VM is destroyed before the caller hears"
    );
    w.shutdown().await;
}

#[tokio::test]
async fn in_process_worker_cuts_what_a_guest_says_in_its_own_words() {
    use ignition_in_process_guest::{Call, Reply};
    let dir = tempfile::tempdir().unwrap();
    let guest = InProcessGuest::new().with_handler(
        "loud.handler",
        Arc::new(|_call: Call| {
            Box::pin(async move { Reply::error(&"T".repeat(10_000), &"é".repeat(3 * 1024 * 1024)) })
        }),
    );
    let w = worker(&guest, dir.path(), 1, 0);
    let e = w
        .run(job("loud", "loud.handler", false), StartMode::Auto)
        .await
        .unwrap();
    let Outcome::FunctionError(err) = &e.result.outcome else {
        panic!("{:?}", e.result.outcome)
    };
    assert!(err.error_type.len() <= 256, "{}", err.error_type.len());
    assert!(
        err.error_message.len() <= 64 * 1024,
        "{}",
        err.error_message.len()
    );
    assert!(err.error_message.ends_with("[truncated by the host]"));
    assert_eq!(w.stats().guest_strings_truncated, 1);
    w.shutdown().await;
}

#[tokio::test]
async fn in_process_worker_drops_an_idle_functions_pool_entry_after_the_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let guest = InProcessGuest::new();
    let w = worker(&guest, dir.path(), 2, 1024);
    w.run(job("once", "vm.handler", false), StartMode::Auto)
        .await
        .unwrap();
    assert_eq!(w.stats().pool_functions, 1, "demand made an entry");
    // Keep-alive 500 ms: its slots go, then the entry holding its code.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.stats().pool_functions > 0 {
        assert!(Instant::now() < deadline, "{:?}", w.pool_status("once"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.pool_status("once").ready, 0);
    w.shutdown().await;
    assert_eq!(guest.counters().live(), 0);
}

#[tokio::test]
async fn in_process_worker_forgets_a_function_with_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let guest = InProcessGuest::new();
    let w = worker(&guest, dir.path(), 2, 0);
    let v1 = ignition_worker::version_spec_name("f", 1);
    for name in ["f", v1.as_str(), "fx"] {
        w.run(job(name, "vm.handler", false), StartMode::Auto)
            .await
            .unwrap();
    }
    let snapshots = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && !n.starts_with("runtime."))
            .map(|n| n.rsplit_once('-').unwrap().0.to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(snapshots(), ["f", "f@1", "fx"]);
    w.forget_function("f").await;
    assert_eq!(
        snapshots(),
        ["fx"],
        "f and its version went; fx is another function"
    );
    w.shutdown().await;
}
