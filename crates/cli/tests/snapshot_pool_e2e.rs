//! Snapshots, restores and the warm pool, with real microVMs.

// Real microVMs, root and QEMU: run by scripts/test.sh, which turns the feature on.
#![cfg(feature = "vm-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{code_dir, json, wait_for, TestServer};
use serde_json::Value;

fn invoke_mode(server: &TestServer, name: &str, mode: &str, payload: &str) -> (Value, String) {
    let (status, headers, body) =
        json(server.invoke_with(name, &[("x-ignition-start", mode)], payload));
    assert_eq!(status, 200, "{body}");
    assert!(headers.get("x-amz-function-error").is_none(), "{body}");
    let started = headers["x-ignition-start"].to_str().unwrap().to_owned();
    (body, started)
}

fn stats(server: &TestServer) -> Value {
    server.get_json("/v1/stats")["worker"].clone()
}

fn pool(server: &TestServer, name: &str) -> Value {
    server.pool(name)
}

fn set_min_ready(server: &TestServer, name: &str, n: usize) {
    server.set_min_ready(name, n);
}

const RANDOM_FN: &str = concat!(
    "import os, random, time, uuid\n",
    "SEEDED_AT_INIT = random.random()\n",
    "def handler(event, context):\n",
    "    mark = '/tmp/mark'\n",
    "    seen = os.path.exists(mark)\n",
    "    open(mark, 'w').write('x')\n",
    "    return {'urandom': os.urandom(16).hex(), 'random': random.random(),\n",
    "            'uuid': str(uuid.uuid4()), 'init': SEEDED_AT_INIT, 'seen_mark': seen,\n",
    "            'time': time.time()}\n",
);

#[test]
fn vms_restored_from_one_snapshot_do_not_share_randomness_or_writes() {
    let server = TestServer::start(&[]);
    let code = code_dir(&[("rnd.py", RANDOM_FN)]);
    server.deploy(
        "rnd",
        "python3",
        "rnd.handler",
        code.path(),
        &["--timeout", "30"],
    );
    let (a, kind_a) = invoke_mode(&server, "rnd", "restore", "{}");
    let (b, kind_b) = invoke_mode(&server, "rnd", "restore", "{}");
    assert_eq!((kind_a.as_str(), kind_b.as_str()), ("restore", "restore"));
    assert_eq!(
        a["init"], b["init"],
        "both come from one snapshot (init ran once)"
    );
    assert_ne!(
        a["urandom"], b["urandom"],
        "kernel RNG reseeded after restore"
    );
    assert_ne!(
        a["random"], b["random"],
        "Python's random reseeded after restore"
    );
    assert_ne!(a["uuid"], b["uuid"]);
    assert_eq!(
        (a["seen_mark"].as_bool(), b["seen_mark"].as_bool()),
        (Some(false), Some(false))
    );

    // Warm slots are restored from the same snapshot and are just as sterile.
    set_min_ready(&server, "rnd", 2);
    wait_for("two warm slots", Duration::from_secs(120), || {
        pool(&server, "rnd")["ready"] == 2
    });
    let (c, kind_c) = invoke_mode(&server, "rnd", "pool", "{}");
    let (d, kind_d) = invoke_mode(&server, "rnd", "pool", "{}");
    assert_eq!((kind_c.as_str(), kind_d.as_str()), ("pool", "pool"));
    assert_ne!(c["urandom"], d["urandom"]);
    assert_ne!(c["random"], d["random"]);
    assert_eq!(
        (c["seen_mark"].as_bool(), d["seen_mark"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(stats(&server)["snapshots_built"], 1);
    server.stop_and_check_clean();
}

#[test]
fn pool_refills_to_its_minimum_and_shrinks_to_zero() {
    let server = TestServer::start(&["--keep-alive", "2"]);
    let code = common::repo_root().join("examples/echo-python");
    server.deploy(
        "echo",
        "python3",
        "echo.handler",
        &code,
        &["--timeout", "30"],
    );
    set_min_ready(&server, "echo", 2);
    wait_for("two warm slots", Duration::from_secs(120), || {
        pool(&server, "echo")["ready"] == 2
    });
    let p = pool(&server, "echo");
    let (now, charged) = (
        p["slot_pss_mib"].as_array().unwrap(),
        p["slot_charged_mib"].as_array().unwrap(),
    );
    assert_eq!((now.len(), charged.len()), (2, 2), "{p}");
    for pss in now.iter().chain(charged) {
        let pss = pss.as_f64().unwrap();
        assert!(
            pss > 1.0 && pss < 512.0,
            "a slot's measured PSS is plausible: {pss}"
        );
    }
    let (body, kind) = invoke_mode(&server, "echo", "pool", r#"{"x":1}"#);
    assert_eq!((body, kind.as_str()), (serde_json::json!({"x": 1}), "pool"));
    // The slot taken is replaced.
    // The slot taken is replaced, and the VM that served is torn down after it answered.
    wait_for("the pool to refill", Duration::from_secs(120), || {
        pool(&server, "echo")["ready"] == 2 && server.vmm_processes().len() == 2
    });

    set_min_ready(&server, "echo", 0);
    wait_for(
        "the pool to shrink to zero",
        Duration::from_secs(60),
        || pool(&server, "echo")["ready"] == 0 && server.vmm_processes().is_empty(),
    );
    server.stop_and_check_clean();
}

#[test]
fn pool_stays_within_its_memory_budget() {
    // Room for a couple of slots at most, whatever is asked for.
    let server = TestServer::start(&["--pool-memory-mib", "120"]);
    let code = common::repo_root().join("examples/echo-python");
    server.deploy(
        "echo",
        "python3",
        "echo.handler",
        &code,
        &["--timeout", "30"],
    );
    set_min_ready(&server, "echo", 8);
    wait_for(
        "the pool to fill what fits",
        Duration::from_secs(120),
        || {
            let p = pool(&server, "echo");
            p["ready"].as_u64().unwrap() >= 1 && p["filling"] == 0
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let v = server.get_json("/v1/functions/echo/pool");
    let total: f64 = v["pool"]["slot_charged_mib"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!(
        total <= 120.0,
        "ready slots hold {total} MiB of a 120 MiB budget: {v}"
    );
    assert!(v["pool"]["ready"].as_u64().unwrap() < 8, "{v}");
    assert!(v["charged_mib"].as_f64().unwrap() <= 120.0, "{v}");
    server.stop_and_check_clean();
}

#[test]
fn a_changed_function_gets_a_new_snapshot_and_a_corrupt_one_is_rebuilt() {
    let server = TestServer::start(&[]);
    let v1 = code_dir(&[("v.py", "def handler(e, c):\n    return 'v1'\n")]);
    let v2 = code_dir(&[("v.py", "def handler(e, c):\n    return 'v2'\n")]);
    server.deploy(
        "ver",
        "python3",
        "v.handler",
        v1.path(),
        &["--timeout", "30"],
    );
    assert_eq!(invoke_mode(&server, "ver", "restore", "{}").0, "v1");
    server.deploy(
        "ver",
        "python3",
        "v.handler",
        v2.path(),
        &["--timeout", "30"],
    );
    assert_eq!(invoke_mode(&server, "ver", "restore", "{}").0, "v2");
    assert_eq!(stats(&server)["snapshots_built"], 2);
    let snaps = server.data_dir.path().join("snapshots");
    let dirs: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ver-"))
        .collect();
    assert_eq!(dirs.len(), 1, "the old snapshot was removed: {dirs:?}");
    // Both versions were derived from one base snapshot (one boot for the memory size).
    assert_eq!(stats(&server)["base_snapshots_built"], 1);

    // Corrupt the device state: the next restore must detect it and rebuild, not restore it.
    std::fs::write(dirs[0].join("state"), b"garbage").unwrap();
    assert_eq!(invoke_mode(&server, "ver", "restore", "{}").0, "v2");
    let s = stats(&server);
    assert_eq!(s["snapshots_invalid"], 1, "{s}");
    assert_eq!(s["snapshots_built"], 3, "{s}");
    assert_eq!(s["restore_fallbacks"], 0, "{s}");
    server.stop_and_check_clean();
}

#[test]
fn reuse_keeps_a_vm_for_the_same_function_only_and_at_most_max_vms_idle() {
    // One VM at a time, so at most one idle VM kept for reuse on the node.
    let server = TestServer::start(&["--max-vms", "1"]);
    let counter = concat!(
        "import os\n",
        "def handler(event, context):\n",
        "    n = int(open('/tmp/count').read()) + 1 if os.path.exists('/tmp/count') else 1\n",
        "    open('/tmp/count', 'w').write(str(n))\n",
        "    return n\n",
    );
    let code = code_dir(&[("count.py", counter)]);
    server.deploy(
        "count",
        "python3",
        "count.handler",
        code.path(),
        &["--timeout", "30", "--reuse"],
    );
    server.deploy(
        "other",
        "python3",
        "count.handler",
        code.path(),
        &["--timeout", "30", "--reuse"],
    );
    let (first, k1) = invoke_mode(&server, "count", "auto", "{}");
    let (second, k2) = invoke_mode(&server, "count", "auto", "{}");
    assert_eq!(
        (first, second),
        (serde_json::json!(1), serde_json::json!(2)),
        "kinds {k1} {k2}"
    );
    assert_eq!(k2, "warm");
    let (other, _) = invoke_mode(&server, "other", "auto", "{}");
    assert_eq!(other, 1, "another function never gets that VM");
    // Keeping `other`'s VM made `count`'s, idle longer, go: the node keeps one.
    let (third, k3) = invoke_mode(&server, "count", "auto", "{}");
    assert_eq!(third, 1, "kind {k3}");
    assert_ne!(k3, "warm");
    // Without reuse every invocation is sterile.
    server.deploy(
        "count",
        "python3",
        "count.handler",
        code.path(),
        &["--timeout", "30"],
    );
    assert_eq!(invoke_mode(&server, "count", "auto", "{}").0, 1);
    assert_eq!(invoke_mode(&server, "count", "auto", "{}").0, 1);
    server.stop_and_check_clean();
}

const CLOCK_FN: &str = concat!(
    "import time\n",
    "def handler(event, context):\n",
    "    m0 = time.monotonic()\n",
    "    time.sleep(2)\n",
    "    return {'wall': time.time(), 'slept': time.monotonic() - m0}\n",
);

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_restored_guest_reads_the_hosts_time_and_its_clock_runs_at_the_hosts_rate() {
    let server = TestServer::start(&[]);
    let code = code_dir(&[("clock.py", CLOCK_FN)]);
    server.deploy(
        "clock",
        "python3",
        "clock.handler",
        code.path(),
        &["--timeout", "30"],
    );
    for mode in ["boot", "restore", "restore"] {
        let before = unix_now();
        let t = std::time::Instant::now();
        let (body, started) = invoke_mode(&server, "clock", mode, "{}");
        let host_elapsed = t.elapsed().as_secs_f64();
        let after = unix_now();
        assert_eq!(started, mode);
        let wall = body["wall"].as_f64().unwrap();
        assert!(
            wall > before - 1.0 && wall < after + 1.0,
            "{mode}: the guest's time {wall} is the host's ({before}..{after})"
        );
        // Two seconds by the guest's clock are two seconds by the host's: a guest told the
        // wrong TSC frequency sleeps 1.5 s here (its clock runs fast).
        assert!(
            (1.9..2.5).contains(&body["slept"].as_f64().unwrap()),
            "{body}"
        );
        assert!(
            host_elapsed >= 1.9,
            "{mode}: the guest's 2 s sleep took {host_elapsed:.2} s of host time"
        );
    }
    server.stop_and_check_clean();
}

/// The CPU share of process `pid`'s cgroup: v1 `cpu.shares` (default 1024), v2 `cpu.weight`
/// (default 100).
fn cpu_share(pid: u32) -> u32 {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let file = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.split(',').any(|c| c == "cpu") {
                Some(format!("/sys/fs/cgroup/cpu{path}/cpu.shares"))
            } else if controllers.is_empty() {
                Some(format!("/sys/fs/cgroup{path}/cpu.weight"))
            } else {
                None
            }
        })
        .unwrap_or_else(|| panic!("no CPU cgroup: {cgroups}"));
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn warm_slots_fill_in_the_background_and_run_in_the_foreground() {
    let server = TestServer::start(&[]);
    let code = common::repo_root().join("examples/sleep-python");
    server.deploy(
        "sleeper",
        "python3",
        "app.handler",
        &code,
        &["--timeout", "30"],
    );
    set_min_ready(&server, "sleeper", 1);
    let mut vmm = 0;
    wait_for("a warm slot", Duration::from_secs(180), || {
        let vmms = server.vmm_processes();
        vmm = vmms.first().copied().unwrap_or(0);
        pool(&server, "sleeper")["ready"] == 1 && vmms.len() == 1
    });
    let background = cpu_share(vmm);
    assert!(
        background == 64 || background == 6,
        "a slot made ahead yields the CPU to running invocations: share {background}"
    );
    let running = {
        let url = server.url.clone();
        std::thread::spawn(move || {
            reqwest::blocking::Client::new()
                .post(format!("{url}/2015-03-31/functions/sleeper/invocations"))
                .header("x-ignition-start", "pool")
                .body(r#"{"sleep": 4, "i": 1}"#)
                .timeout(Duration::from_secs(60))
                .send()
                .unwrap()
                .status()
        })
    };
    wait_for(
        "the taken slot to run in the foreground",
        Duration::from_secs(3),
        || {
            let share = cpu_share(vmm);
            share == 1024 || share == 100
        },
    );
    assert_eq!(running.join().unwrap(), 200);
    server.stop_and_check_clean();
}

/// A zip of `files` (name, text, Unix mode).
fn zip_of(files: &[(&str, &str, u32)]) -> String {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text, mode) in files {
        w.start_file(
            *name,
            zip::write::SimpleFileOptions::default().unix_permissions(*mode),
        )
        .unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(w.finish().unwrap().into_inner())
}

/// PublishLayerVersion of `files`; the version's ARN.
fn publish_layer(server: &TestServer, name: &str, files: &[(&str, &str, u32)]) -> String {
    publish_layer_zip(server, name, zip_of(files))
}

/// PublishLayerVersion of a zip (base64); the version's ARN.
fn publish_layer_zip(server: &TestServer, name: &str, zip: String) -> String {
    let (status, _, v) = json(
        server
            .http()
            .post(format!("{}/2018-10-31/layers/{name}/versions", server.url))
            .json(&serde_json::json!({"Content": {"ZipFile": zip}}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 201, "{v}");
    v["LayerVersionArn"].as_str().unwrap().to_owned()
}

/// CreateFunction with `body`; panics unless it is made.
fn create_function(server: &TestServer, body: &Value) {
    let (status, _, c) = json(
        server
            .http()
            .post(format!("{}/2015-03-31/functions", server.url))
            .json(body)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 201, "{c}");
}

const LAYERED_FN: &str = concat!(
    "import os, subprocess, dep\n",
    "def handler(event, context):\n",
    "    try:\n",
    "        open('/opt/written', 'w').write('x')\n",
    "        opt_writable = True\n",
    "    except OSError:\n",
    "        opt_writable = False\n",
    "    return {'dep': dep.v, 'message': open('/opt/message.txt').read(),\n",
    "            'first_only': open('/opt/first.txt').read(),\n",
    "            'tool': subprocess.run(['tool'], capture_output=True, text=True).stdout,\n",
    "            'opt_writable': opt_writable, 'own': open('/var/task/app.py').read()[:9],\n",
    "            'big': os.path.getsize('/opt/big.txt') if os.path.exists('/opt/big.txt') else 0}\n",
);

/// #21: a function's layers are under `/opt` in its microVM, in order (a later layer's file
/// over an earlier one's), read-only, with Python's and the shell's paths set as Lambda sets
/// them, the same when the VM is restored from the function's snapshot; a layer may be larger
/// than a function's memory (80 MiB in a 128 MiB VM); a changed list of layers makes another
/// snapshot; and a `provided` function may take its bootstrap from a layer.
#[test]
fn a_function_sees_its_layers_under_opt_in_order_from_its_snapshot() {
    let server = TestServer::start(&[]);
    let first = publish_layer(
        &server,
        "base",
        &[
            ("python/dep.py", "v = 'first'\n", 0o644),
            ("message.txt", "from the first layer", 0o644),
            ("first.txt", "only in the first", 0o644),
            ("bin/tool", "#!/bin/sh\necho tool from /opt/bin\n", 0o755),
        ],
    );
    let second = publish_layer(
        &server,
        "over",
        &[
            ("python/dep.py", "v = 'second'\n", 0o644),
            ("message.txt", "from the second layer", 0o644),
        ],
    );
    // 80 MiB of four letters: it deflates to about a quarter, within a request.
    let work = tempfile::tempdir().unwrap();
    let big_zip = work.path().join("big.zip");
    let made = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(concat!(
            "import os, sys, zipfile\n",
            "table = bytes(b'acgt'[i & 3] for i in range(256))\n",
            "data = os.urandom(80 << 20).translate(table)\n",
            "with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as z:\n",
            "    z.writestr('big.txt', data)\n",
        ))
        .arg(&big_zip)
        .status()
        .unwrap();
    assert!(made.success());
    let big = {
        use base64::Engine as _;
        let zip = std::fs::read(&big_zip).unwrap();
        publish_layer_zip(
            &server,
            "big",
            base64::engine::general_purpose::STANDARD.encode(zip),
        )
    };
    let create = serde_json::json!({"FunctionName": "layered", "Runtime": "python3.11",
        "Role": "r", "Handler": "app.handler", "Timeout": 30, "MemorySize": 128,
        "Code": {"ZipFile": zip_of(&[("app.py", LAYERED_FN, 0o644)])},
        "Layers": [first, second, big]});
    create_function(&server, &create);
    for _ in 0..2 {
        let (body, started) = invoke_mode(&server, "layered", "restore", "{}");
        assert_eq!(started, "restore");
        assert_eq!(body["dep"], "second", "the later layer's module: {body}");
        assert_eq!(body["message"], "from the second layer");
        assert_eq!(body["first_only"], "only in the first");
        assert_eq!(body["tool"], "tool from /opt/bin\n", "PATH has /opt/bin");
        assert_eq!(body["opt_writable"], false, "/opt is read-only");
        assert_eq!(
            body["own"], "import os",
            "the function's code is at /var/task"
        );
    }
    assert_eq!(stats(&server)["snapshots_built"], 1);
    // Only the first layer now: another image, another snapshot.
    let (status, _, c) = json(
        server
            .http()
            .put(format!(
                "{}/2015-03-31/functions/layered/configuration",
                server.url
            ))
            .json(&serde_json::json!({"Layers": [first]}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{c}");
    let (body, _) = invoke_mode(&server, "layered", "restore", "{}");
    assert_eq!(body["dep"], "first", "{body}");
    assert_eq!(body["message"], "from the first layer");
    assert_eq!(stats(&server)["snapshots_built"], 2);

    // A custom runtime shipped as a layer: `provided` without a bootstrap of its own runs the
    // layer's `/opt/bootstrap`.
    let bootstrap =
        std::fs::read_to_string(common::repo_root().join("examples/hello-provided/bootstrap"))
            .unwrap();
    let runtime = publish_layer(&server, "runtime", &[("bootstrap", &bootstrap, 0o755)]);
    let create = serde_json::json!({"FunctionName": "custom", "Runtime": "provided",
        "Role": "r", "Handler": "my.handler", "Timeout": 30,
        "Code": {"ZipFile": zip_of(&[("README", "the runtime is a layer", 0o644)])},
        "Layers": [runtime]});
    create_function(&server, &create);
    let (body, _) = invoke_mode(&server, "custom", "auto", "{}");
    assert_eq!(body["runtime"], "provided", "{body}");
    assert_eq!(body["handler"], "my.handler");
    server.stop_and_check_clean();
}
