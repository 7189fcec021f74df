//! End to end, with real microVMs (QEMU; TCG on machines without hardware virtualization): a
//! server, the CLI and HTTP clients, functions that boot their own guest kernel.
//!
//! Every test starts its own server and ends by stopping it and checking that no VMM process and
//! no run directory was left behind.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{code_dir, host_kernel_release, json, repo_root, TestServer};

#[test]
fn python_function_runs_under_the_guest_kernel() {
    let server = TestServer::start(&[]);
    let code = repo_root().join("examples/hello-python");
    server.deploy("hello", "python3", "app.handler", &code, &[]);

    let out = server.cli(&["fn", "invoke", "hello", "--data", r#"{"name":"Ada"}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["message"], "Hello, Ada!");
    let guest_kernel = result["kernel"].as_str().unwrap().to_owned();
    assert_ne!(
        guest_kernel,
        host_kernel_release(),
        "the function must not run on the host kernel"
    );
    assert!(
        guest_kernel.ends_with("-cloud-amd64"),
        "Debian cloud kernel expected, got {guest_kernel}"
    );

    // The agent's view of the kernel (from uname in PID 1) agrees with the function's.
    let (status, headers, body) = json(server.invoke("hello", "{}"));
    assert_eq!(status, 200);
    assert_eq!(body["message"], "Hello, world!");
    assert_eq!(
        headers["x-ignition-guest-kernel"].to_str().unwrap(),
        guest_kernel
    );
    assert!(headers.contains_key("x-amzn-requestid"));
    assert_eq!(
        body["request_id"].as_str().unwrap(),
        headers["x-amzn-requestid"].to_str().unwrap()
    );

    let ls = server.cli(&["fn", "ls"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("hello"));
    assert!(server.cli(&["fn", "rm", "hello"]).status.success());
    let gone = server.cli(&["fn", "invoke", "hello"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("ResourceNotFoundException"));
    server.stop_and_check_clean();
}

#[test]
fn provided_bootstrap_speaks_the_runtime_api() {
    let server = TestServer::start(&[]);
    let code = repo_root().join("examples/hello-provided");
    server.deploy("shell", "provided", "my.handler", &code, &[]);
    let (status, headers, body) = json(server.invoke("shell", r#"{"k":"0123456789"}"#));
    assert_eq!(status, 200, "{body}");
    assert!(headers.get("x-amz-function-error").is_none());
    assert_eq!(body["runtime"], "provided");
    assert_eq!(body["handler"], "my.handler");
    assert_eq!(body["event_bytes"], 18);
    assert_ne!(body["kernel"].as_str().unwrap(), host_kernel_release());
    server.stop_and_check_clean();
}

#[test]
fn raising_handler_reports_a_function_error_with_its_traceback() {
    let server = TestServer::start(&[]);
    let code = code_dir(&[(
        "fail.py",
        "def inner(n):\n    raise ValueError('bad input %d' % n)\n\ndef handler(event, context):\n    print('about to fail')\n    inner(42)\n",
    )]);
    server.deploy("fail", "python3", "fail.handler", code.path(), &[]);
    let (status, headers, body) =
        json(server.invoke_with("fail", &[("X-Amz-Log-Type", "Tail")], "{}"));
    assert_eq!(status, 200, "a function error is not an HTTP error");
    assert_eq!(headers["x-amz-function-error"], "Unhandled");
    assert_eq!(body["errorType"], "ValueError");
    assert_eq!(body["errorMessage"], "bad input 42");
    let trace = body["stackTrace"].to_string();
    assert!(
        trace.contains("inner"),
        "stack trace names the frames: {trace}"
    );
    let logs = common::log_tail(&headers);
    assert!(logs.contains("about to fail"), "{logs}");
    assert!(logs.contains("Traceback"), "{logs}");

    let out = server.cli(&["fn", "invoke", "fail"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ValueError: bad input 42"), "{stderr}");
    server.stop_and_check_clean();
}

#[test]
fn a_function_that_fails_to_initialize_reports_its_error() {
    let server = TestServer::start(&[]);
    let code = code_dir(&[(
        "broken.py",
        "import does_not_exist\n\ndef handler(e, c):\n    return 1\n",
    )]);
    server.deploy("broken", "python3", "broken.handler", code.path(), &[]);
    let (status, headers, body) = json(server.invoke("broken", "{}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-amz-function-error"], "Unhandled");
    assert_eq!(body["errorType"], "ModuleNotFoundError", "{body}");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("does_not_exist"),
        "{body}"
    );
    server.stop_and_check_clean();
}

#[test]
fn timeout_kills_the_vm_at_the_deadline_and_keeps_what_it_logged() {
    // No warm pool here: the only VM is the one that timed out.
    let server = TestServer::start(&["--pool-memory-mib", "0"]);
    let code = code_dir(&[(
        "slow.py",
        "import time\n\ndef handler(event, context):\n    print('going to sleep', flush=True)\n    time.sleep(120)\n    return 'never'\n",
    )]);
    server.deploy(
        "slow",
        "python3",
        "slow.handler",
        code.path(),
        &["--timeout", "1"],
    );
    let t = Instant::now();
    let (status, headers, body) =
        json(server.invoke_with("slow", &[("X-Amz-Log-Type", "Tail")], "{}"));
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(status, 200);
    assert_eq!(headers["x-amz-function-error"], "Unhandled");
    assert_eq!(body["errorType"], "Sandbox.Timedout");
    assert!(body["errorMessage"]
        .as_str()
        .unwrap()
        .contains("Task timed out after 1.00 seconds"));
    // What the handler printed before its time ran out is the user's best clue: it is kept.
    let tail = common::log_tail(&headers);
    assert!(tail.contains("going to sleep"), "{tail}");
    assert!(tail.contains("Task timed out after 1.00 seconds"), "{tail}");
    let request_id = headers["x-amzn-requestid"].to_str().unwrap().to_owned();
    let kept = wait_for_log(&server, "slow", &request_id, "going to sleep");
    assert!(kept.contains("Task timed out"), "{kept}");
    assert!(
        server.vmm_processes().is_empty(),
        "the VM is gone when the caller hears of the timeout"
    );

    let out = server.cli(&["fn", "invoke", "slow"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
    server.stop_and_check_clean();
}

#[test]
fn four_invocations_at_once_each_get_a_sterile_vm() {
    let server = TestServer::start(&["--max-vms", "4"]);
    let code = code_dir(&[(
        "echo.py",
        "import os\n\nMARK = '/tmp/ignition-test-mark'\n\ndef handler(event, context):\n    seen = os.path.exists(MARK)\n    open(MARK, 'w').write('x')\n    return {'n': event['n'], 'seen_mark': seen, 'token': os.urandom(8).hex()}\n",
    )]);
    server.deploy(
        "echo",
        "python3",
        "echo.handler",
        code.path(),
        &["--timeout", "30"],
    );
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|n| {
                let server = &server;
                s.spawn(move || {
                    let (status, _, body) = json(server.invoke("echo", &format!(r#"{{"n":{n}}}"#)));
                    assert_eq!(status, 200, "{body}");
                    body
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (n, r) in results.iter().enumerate() {
        assert_eq!(r["n"], n, "{r}");
        assert_eq!(
            r["seen_mark"], false,
            "a write from another invocation leaked: {r}"
        );
    }
    let tokens: std::collections::HashSet<_> =
        results.iter().map(|r| r["token"].to_string()).collect();
    assert_eq!(tokens.len(), 4);
    // Sequentially too: the second invocation does not see the first one's file.
    let (_, _, again) = json(server.invoke("echo", r#"{"n":9}"#));
    assert_eq!(again["seen_mark"], false);
    server.stop_and_check_clean();
}

#[test]
fn the_vmm_runs_jailed() {
    let server = TestServer::start(&[]);
    let code = repo_root().join("examples/echo-python");
    server.deploy(
        "echo",
        "python3",
        "echo.handler",
        &code,
        &["--timeout", "30"],
    );
    // Warm slots keep VMM processes alive to look at.
    server.set_min_ready("echo", 2);
    // Wait for the slots to be ready: then their VMMs are fully started (seccomp is installed
    // during QEMU's start-up) and the only ones left.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (pid, other) = loop {
        let pool = server.pool("echo");
        let vmms = server.vmm_processes();
        if pool["ready"] == 2 && vmms.len() == 2 {
            break (vmms[0], vmms[1]);
        }
        assert!(Instant::now() < deadline, "no warm slots appeared: {pool}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    // An unprivileged user of its own, in the VMMs' group and no other.
    let ids = |status: &str, field: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap_or_default()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let uids = ids(&status, "Uid:");
    assert_eq!(uids.len(), 4, "{status}");
    assert!(
        uids.iter().all(|u| *u == uids[0] && *u >= 2_000_000_000),
        "the VMM runs as an unprivileged user (real, effective, saved, fs): {status}"
    );
    assert_eq!(ids(&status, "Gid:"), vec![2_000_000_000; 4], "{status}");
    assert_eq!(ids(&status, "Groups:"), Vec::<u32>::new(), "{status}");
    let other_status = std::fs::read_to_string(format!("/proc/{other}/status")).unwrap();
    assert_ne!(
        ids(&other_status, "Uid:")[0],
        uids[0],
        "two VMMs run as two users"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1")),
        "the VMM is PID 1 of a PID namespace of its own: {status}"
    );
    for ns in ["net", "ipc", "mnt", "uts", "pid"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the VMM shares the {ns} namespace");
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let vm_cgroups = cgroups
        .lines()
        .filter(|l| l.contains("/ignition/") && l.contains("/vm-"))
        .count();
    assert!(vm_cgroups >= 1, "the VMM is in its own cgroup: {cgroups}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.is_empty(), "the VMM inherits no environment");
    // Nor any descriptor but its standard streams (this test's own process, started by cargo,
    // holds some without close-on-exec): every file it has open is one it opened in its root,
    // and its only pipe is its standard error, which the server reads.
    let root_link = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap();
        let n: u32 = fd.file_name().to_string_lossy().parse().unwrap();
        let target = std::fs::read_link(fd.path()).unwrap();
        let t = target.to_string_lossy();
        match n {
            0 | 1 => assert_eq!(t, "/dev/null"),
            2 => assert!(t.starts_with("pipe:"), "fd 2: {t}"),
            _ => assert!(
                target.starts_with(&root_link)
                    || t.starts_with("socket:")
                    || t.starts_with("anon_inode:"),
                "fd {n} of the VMM is {t}, from outside its root"
            ),
        }
    }
    // Chrooted into a root of its own holding only what it needs...
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert!(
        root.starts_with(&server.run_dir) && root.ends_with("root"),
        "the VMM's root is its jail: {}",
        root.display()
    );
    let seen = |p: &str| std::path::Path::new(&format!("/proc/{pid}/root{p}")).exists();
    assert!(seen("/usr/bin") && seen("/dev/null"));
    for hidden in ["/etc/passwd", "/home", "/proc/1", "/var", "/sys/kernel"] {
        assert!(!seen(hidden), "the jail shows {hidden}");
    }
    // ...without a single capability, and unable to gain one.
    for field in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(field) && l.trim_end().ends_with("0000000000000000")),
            "{field} is empty: {status}"
        );
    }
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.trim_end().ends_with('1')),
        "{status}"
    );
    server.stop_and_check_clean();
}

#[test]
fn a_function_cannot_reach_the_guest_kernel_controls() {
    // The runtime runs as an unprivileged user: sysrq (a kernel crash), module loading and
    // kernel tunables are out of its reach; it gets an ordinary exception.
    let server = TestServer::start(&[]);
    let code = code_dir(&[(
        "crash.py",
        "import os\n\ndef handler(event, context):\n    if event.get('crash'):\n        open('/proc/sysrq-trigger', 'w').write('c')\n    return {'uid': os.getuid()}\n",
    )]);
    server.deploy(
        "crash",
        "python3",
        "crash.handler",
        code.path(),
        &["--timeout", "30"],
    );
    let (status, headers, body) = json(server.invoke("crash", r#"{"crash":true}"#));
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-amz-function-error"], "Unhandled");
    assert_eq!(body["errorType"], "PermissionError", "{body}");
    let (status, _, body) = json(server.invoke("crash", "{}"));
    assert_eq!((status, body), (200, serde_json::json!({"uid": 993})));
    server.stop_and_check_clean();
}

#[test]
fn guest_that_is_not_ready_in_time_is_cleaned_up() {
    // One second is far less than a boot takes under emulation: the guest never says Ready.
    let server = TestServer::start(&["--boot-timeout", "1", "--pool-memory-mib", "0"]);
    let code = repo_root().join("examples/hello-python");
    server.deploy("hello", "python3", "app.handler", &code, &[]);
    let (status, _, body) = json(server.invoke("hello", "{}"));
    assert_eq!(status, 502, "{body}");
    let msg = body["errorMessage"].as_str().unwrap();
    assert!(msg.contains("did not become ready"), "{msg}");
    assert!(server.vmm_processes().is_empty());
    server.stop_and_check_clean();
}

/// Waits until the function's kept log for `request_id` contains `needle` (logs are stored just
/// after the answer); returns that log.
fn wait_for_log(server: &TestServer, function: &str, request_id: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = server.cli(&["fn", "logs", function, "--request-id", request_id]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(needle) || Instant::now() > deadline {
            assert!(text.contains(needle), "kept log of {request_id}: {text}");
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
