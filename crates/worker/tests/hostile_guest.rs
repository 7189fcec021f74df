//! Hostile guests in real microVMs: the agent is replaced by `ignition-hostile-guest`, which
//! misbehaves in the way the function's handler names. Each time the VM must be destroyed, the
//! invocation must fail with a clear error, nothing may be left on the host, and the worker must
//! go on serving: a normal function on the real agent runs afterwards.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ignition_image::{BuildOptions, GuestImage};
use ignition_proto::{FunctionSpec, Outcome, Runtime};
use ignition_vmm::qemu::{QemuConfig, QemuDriver};
use ignition_vmm::Accel;
use ignition_worker::{ExecError, Job, PoolConfig, StartMode, Worker, WorkerConfig};

fn target_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/release")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p ignition-agent --target x86_64-unknown-linux-gnu",
        p.display()
    );
    p
}

fn image(agent: &str) -> GuestImage {
    let cache_dir = std::env::var_os("IGNITION_CACHE_DIR")
        .map_or_else(ignition_image::default_cache_dir, PathBuf::from);
    ignition_image::build_unrecorded(&BuildOptions {
        cache_dir,
        agent: target_bin(agent),
    })
    .unwrap()
}

fn worker(image: GuestImage, run_dir: &Path, snapshots: &Path) -> Arc<Worker> {
    let driver = QemuDriver::new(QemuConfig {
        binary: "qemu-system-x86_64".into(),
        accel: Accel::Auto,
        run_dir: run_dir.to_path_buf(),
        jail: true,
        users: Default::default(),
    });
    Worker::new(
        Arc::new(driver),
        image,
        WorkerConfig {
            max_vms: 4,
            boot_timeout: Duration::from_secs(60),
            load_timeout: Duration::from_secs(30),
            snapshot_dir: snapshots.to_path_buf(),
            snapshot_disk_mib: None,
            pool: PoolConfig {
                memory_budget_mib: 0,
                keep_alive: Duration::from_secs(1),
                refill_parallelism: 1,
            },
            // The protocol is what is under test; the guest needs no network.
            network: None,
            code_source: None,
        },
    )
}

fn job(handler: &str, timeout: Duration) -> Job {
    let code_tar = {
        let mut b = tar::Builder::new(Vec::new());
        let body = b"def handler(event, context):\n    return {'ok': True}\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "app.py", &body[..]).unwrap();
        b.into_inner().unwrap()
    };
    Job {
        function: Arc::new(FunctionSpec {
            name: "victim".into(),
            runtime: Runtime::Python3,
            handler: handler.into(),
            memory_mib: 128,
            env: Vec::new(),
            code: ignition_proto::Code::Tar(code_tar.clone()),
            display_name: "victim".into(),
            version: "$LATEST".into(),
            account_id: ignition_types::DEFAULT_ACCOUNT_ID.into(),
            image: None,
        }),
        code_sha256: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&code_tar))
        },
        layers: Arc::from(Vec::new()),
        reuse: false,
        egress: Arc::from(Vec::new()),
        request_id: format!("req-{handler}"),
        payload: b"{}".to_vec(),
        client_context: None,
        timeout,
    }
}

fn leftover_vmms(run_dir: &Path) -> usize {
    let needle = format!("{}/", run_dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_cost_only_their_own_vm() {
    let run = tempfile::tempdir().unwrap();
    let snaps = tempfile::tempdir().unwrap();
    let hostile = worker(image("ignition-hostile-guest"), run.path(), snaps.path());

    let cases: &[(&str, &str)] = &[
        ("garbage", "bad frame magic"),
        ("oversize", "exceeds the limit"),
        ("bad-body", "malformed frame body"),
        ("flood", "expected Result, got Warmed"),
        ("wrong-id", "while \"req-wrong-id\" was in flight"),
        ("huge-result", "exceeds the limit"),
        ("silent", "timed out"),
        ("stall", "timed out"),
        ("exit", "closed its channel"),
    ];
    let runs = cases.iter().map(|(mode, _)| {
        let w = Arc::clone(&hostile);
        async move {
            let t = Instant::now();
            let r = w
                .run(job(mode, Duration::from_secs(3)), StartMode::Boot)
                .await;
            (r, t.elapsed())
        }
    });
    let results = futures_join_all(runs).await;
    for ((mode, expected), (result, took)) in cases.iter().zip(results) {
        let err = match result {
            Err(e) => e,
            Ok(exec) => panic!(
                "{mode}: a hostile guest's invocation succeeded: {:?}",
                exec.result
            ),
        };
        let text = err.to_string();
        assert!(
            text.contains(expected),
            "{mode}: error {text:?} should mention {expected:?}"
        );
        match (*mode, &err) {
            ("silent" | "stall", ExecError::Timeout(_)) => {}
            ("silent" | "stall", other) => panic!("{mode}: expected a timeout, got {other}"),
            (_, ExecError::Protocol(_)) => {}
            (_, other) => panic!("{mode}: expected a protocol error, got {other}"),
        }
        assert!(took < Duration::from_secs(90), "{mode} took {took:?}");
    }
    // A guest that floods its console while answering correctly: the answer is taken, and the
    // console is only ever a bounded ring on the host.
    let exec = hostile
        .run(
            job("console-flood", Duration::from_secs(10)),
            StartMode::Boot,
        )
        .await
        .unwrap();
    assert_eq!(
        exec.result.outcome,
        Outcome::Success(b"\"survived\"".to_vec())
    );

    // Invocations answer before their VM is torn down.
    hostile.settle().await;
    assert_eq!(
        leftover_vmms(run.path()),
        0,
        "every hostile VM was destroyed"
    );
    assert_eq!(
        std::fs::read_dir(run.path()).unwrap().count(),
        0,
        "no run directory left"
    );

    // The node carries on: a normal function on the real agent still works.
    let normal = worker(image("ignition-agent"), run.path(), snaps.path());
    let exec = normal
        .run(job("app.handler", Duration::from_secs(30)), StartMode::Boot)
        .await
        .unwrap();
    assert_eq!(
        exec.result.outcome,
        Outcome::Success(br#"{"ok": true}"#.to_vec())
    );
    normal.settle().await;
    assert_eq!(leftover_vmms(run.path()), 0);
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
