//! Execution limits inside real microVMs: each hostile function ends within its limits, the caller
//! gets a clear error, and a normal function invoked afterwards still works.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{code_dir, json, log_tail, TestServer};

fn invoke_with_logs(
    server: &TestServer,
    name: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value, String) {
    let (status, headers, body) =
        json(server.invoke_with(name, &[("X-Amz-Log-Type", "Tail")], "{}"));
    let logs = log_tail(&headers);
    (status, headers, body, logs)
}

fn assert_still_serves(server: &TestServer) {
    let (status, _, body) = json(server.invoke("normal", r#"{"n":7}"#));
    assert_eq!((status, body), (200, serde_json::json!({"n": 7})));
}

#[test]
fn hostile_functions_end_within_their_limits() {
    let server = TestServer::start(&[]);
    let normal = common::repo_root().join("examples/echo-python");
    server.deploy(
        "normal",
        "python3",
        "echo.handler",
        &normal,
        &["--timeout", "30"],
    );
    let code = code_dir(&[(
        "bad.py",
        concat!(
            "import os, sys\n",
            "def memory_hog(event, context):\n",
            "    hoard = []\n",
            "    while True:\n",
            "        hoard.append(bytearray(16 * 1024 * 1024))\n",
            "def fork_bomb(event, context):\n",
            "    while True:\n",
            "        try:\n",
            "            os.fork()\n",
            "        except OSError:\n",
            "            pass\n",
            "def output_flood(event, context):\n",
            "    chunk = 'x' * 65536\n",
            "    for _ in range(800):\n",
            "        sys.stdout.write(chunk)\n",
            "    sys.stdout.flush()\n",
            "    return 'flooded'\n",
            "def huge_result(event, context):\n",
            "    return 'y' * (7 * 1024 * 1024)\n",
            "def disk_fill(event, context):\n",
            "    with open('/tmp/fill', 'wb') as f:\n",
            "        while True:\n",
            "            f.write(b'z' * (1024 * 1024))\n",
        ),
    )]);
    for (name, handler) in [
        ("memhog", "bad.memory_hog"),
        ("forkbomb", "bad.fork_bomb"),
        ("flood", "bad.output_flood"),
        ("huge", "bad.huge_result"),
        ("disk", "bad.disk_fill"),
    ] {
        let timeout = if name == "forkbomb" { "5" } else { "20" };
        server.deploy(
            name,
            "python3",
            handler,
            code.path(),
            &["--timeout", timeout],
        );
    }

    // Memory: the function's memory is the VM's; the allocation fails inside the guest.
    let (status, headers, body, _) = invoke_with_logs(&server, "memhog");
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-amz-function-error"], "Unhandled", "{body}");
    let kind = body["errorType"].as_str().unwrap();
    assert!(
        kind == "MemoryError" || kind == "Runtime.ExitError",
        "{body}"
    );
    assert_still_serves(&server);

    // Processes: the fork bomb stops at the guest's process limit; the deadline ends the VM,
    // unless the guest's OOM killer ends the runtime first (the processes it made before the
    // limit hold the guest's memory). Either way it ends inside its VM, in time.
    let t = Instant::now();
    let (status, _, body, _) = invoke_with_logs(&server, "forkbomb");
    assert_eq!(status, 200, "{body}");
    let kind = body["errorType"].as_str().unwrap();
    assert!(
        kind == "Sandbox.Timedout" || kind == "Runtime.ExitError",
        "{body}"
    );
    assert!(t.elapsed() < Duration::from_secs(90));
    assert_still_serves(&server);

    // Output: 50 MiB of logs are cut at the limit, and the cut is said.
    let (status, headers, body, logs) = invoke_with_logs(&server, "flood");
    assert_eq!((status, &body), (200, &serde_json::json!("flooded")));
    assert!(headers.get("x-amz-function-error").is_none());
    assert!(
        logs.contains("[ignition: log truncated]"),
        "{}",
        &logs[logs.len().saturating_sub(300)..]
    );
    assert!(logs.len() <= 4096);

    // Results larger than the API allows are refused by name.
    let (status, _, body, _) = invoke_with_logs(&server, "huge");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errorType"], "Function.ResponseSizeTooLarge", "{body}");
    assert_still_serves(&server);

    // Disk: the writable layer is bounded; the write fails inside the guest.
    let (status, _, body, _) = invoke_with_logs(&server, "disk");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errorType"], "OSError", "{body}");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{body}"
    );
    assert_still_serves(&server);
    server.stop_and_check_clean();
}

/// #19: a bundle of 40 MiB (accepted at deploy) failed at every invocation in a 128 MiB VM
/// (its code was unpacked into guest memory) while the pool retried its slot, and SIGTERM then
/// aborted the node with a stack overflow. The code is now on the VM's code drive: the function
/// runs at 128 MiB, reads every byte of its 40 MiB as they were deployed, finds `/var/task`
/// read-only as on Lambda, and the node stops cleanly (exit 0, no VM left).
#[test]
fn a_40_mib_bundle_runs_in_a_128_mib_vm_from_its_code_drive_and_the_node_stops_cleanly() {
    let server = TestServer::start(&["--keep-alive", "60"]);
    let dir = code_dir(&[(
        "app.py",
        "import hashlib, os\n\
         def handler(event, context):\n\
         \x20   h = hashlib.sha256()\n\
         \x20   with open('/var/task/padding.bin', 'rb') as f:\n\
         \x20       while True:\n\
         \x20           b = f.read(1 << 20)\n\
         \x20           if not b:\n\
         \x20               break\n\
         \x20           h.update(b)\n\
         \x20   try:\n\
         \x20       open('/var/task/new-file', 'w').write('x')\n\
         \x20       writable = 'yes'\n\
         \x20   except OSError as e:\n\
         \x20       writable = e.strerror\n\
         \x20   return {'sha256': h.hexdigest(), 'writable': writable}\n",
    )]);
    // 40 MiB that compress to nothing less (xorshift, so no two runs need the same bytes).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let big: Vec<u8> = (0..40 * 1024 * 1024 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&big))
    };
    std::fs::write(dir.path().join("padding.bin"), big).unwrap();
    server.deploy(
        "large",
        "python3",
        "app.handler",
        dir.path(),
        &["--memory", "128"],
    );
    for _ in 0..2 {
        let (status, _, body) = json(server.invoke("large", "{}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sha256"], want.as_str(), "{body}");
        assert_eq!(
            body["writable"], "Read-only file system",
            "the code is read-only: {body}"
        );
    }
    server.set_min_ready("large", 1);
    std::thread::sleep(Duration::from_secs(5));
    let started = Instant::now();
    server.stop_and_check_clean();
    assert!(started.elapsed() < Duration::from_secs(20));
}
